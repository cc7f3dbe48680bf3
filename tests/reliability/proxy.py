"""A fault-injecting HTTP reverse proxy to put in front of a real `mlflow server`.

Healthy, it forwards every request unchanged and returns the server's answer.
Switched to ``fail()``, it answers ``500`` itself (optionally after letting a
few more requests through, to break an operation half-way, and optionally only
to requests whose path contains a given string); switched to
``drop()``, it closes connections without an answer, as a crashed load balancer
does. ``heal()`` makes it healthy again. It also remembers the request lines
and ``Authorization`` headers it saw, so tests can see what clients sent.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
_INJECTED = b'{"error_code": "INTERNAL_ERROR", "message": "injected by the test proxy"}'


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str, port: int = 0):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._mode = "healthy"
        self._grace = 0
        self._only: tuple[str, ...] | None = None
        self.forwarded = 0
        self.failed = 0
        self.dropped = 0
        self.requests: list[str] = []
        self.authorizations: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, after: int = 0, only: tuple[str, ...] | None = None) -> None:
        """Answer 500 once ``after`` more requests passed (to paths containing one of ``only``)."""
        with self._lock:
            self._mode, self._grace, self._only = "fail", after, only

    def drop(self, after: int = 0, only: tuple[str, ...] | None = None) -> None:
        """Close connections unanswered, like ``fail`` otherwise."""
        with self._lock:
            self._mode, self._grace, self._only = "drop", after, only

    def heal(self) -> None:
        """Forward everything again."""
        with self._lock:
            self._mode, self._grace, self._only = "healthy", 0, None

    def _decide(self, path: str) -> str:
        with self._lock:
            if self._mode == "healthy" or (
                self._only is not None and not any(part in path for part in self._only)
            ):
                return "healthy"
            if self._grace > 0:
                self._grace -= 1
                return "healthy"
            return self._mode

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - the base class's name
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _relay(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.requests.append(f"{self.command} {self.path}")
                    if self.headers.get("Authorization"):
                        proxy.authorizations.append(self.headers["Authorization"])
                mode = proxy._decide(self.path)
                if mode == "drop":
                    with proxy._lock:
                        proxy.dropped += 1
                    self.close_connection = True
                    self.connection.close()
                    return
                if mode == "fail":
                    with proxy._lock:
                        proxy.failed += 1
                    self._answer(500, {"Content-Type": "application/json"}, _INJECTED)
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "host"
                }
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=60
                )
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    answer = {
                        k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP
                    }
                    status = response.status
                except OSError as err:
                    status, answer, data = 502, {"Content-Type": "text/plain"}, str(err).encode()
                finally:
                    upstream.close()
                with proxy._lock:
                    proxy.forwarded += 1
                self._answer(status, answer, data)

            def _answer(self, status: int, headers: dict, data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

        return Handler
