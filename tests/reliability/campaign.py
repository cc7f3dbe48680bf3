"""A randomized crash campaign: kill real training anywhere, restart, check invariants.

Run it on demand from the repository root::

    python tests/reliability/campaign.py --kills 50 [--store local|ram|s3] [--server] [--seed N]
    python tests/reliability/campaign.py --replay SEED [--store ...]   # one episode again

Each episode (a trial) has a seed of its own, printed first: from it come a
fresh model directory (local; ``ram://``, which ends with its process, so that a
restart begins from nothing while MLflow still holds the killed runs' models;
or ``s3://<new bucket>/run`` on a moto server the campaign starts on
127.0.0.1) and a fresh ``sqlite:///`` store that the
first process creates (with ``--server``: an experiment and a registered model
of its own on a real ``mlflow server`` with proxied artifacts, started by the
campaign on 127.0.0.1), a random ``exports_to_keep``, and one to three kills in
a row. A kill is either at a named point of an export (``tiny.KILL_POINTS``, a
random step) or a SIGKILL from outside at a random moment of the process: a
quarter of them in its first 5 s (imports, the first checkpoint), the rest up
to 30 s (store creation, evals, exports, uploads, retention). Then training is
restarted to the end and every invariant of ``harness.check_invariants`` is
checked with oracles that are not the product (directory or bucket listing,
``summary_iterator``, ``tf.train.load_variable``, MLflow's client).

The last line is ``N kills, N recovered, 0 invariant violations`` (the real
counts); the exit status is 1 when any invariant was violated.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import tiny  # noqa: E402  (harness puts tests/ on sys.path)

# Kill points that fire at exactly their step; the others fire at the first chance at or after it.
EXACT_STEP_POINTS = ("before_export", "before_retention")
EARLY = 5.0  # seconds: "the first seconds of a process"
LATE = 30.0


@dataclass
class Tally:
    """What the campaign did."""

    kills: int = 0
    recovered: int = 0
    violations: int = 0
    attempts: int = 0
    episodes: int = 0
    early: int = 0  # kills in the first EARLY seconds of a process
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.kills} kills, {self.recovered} recovered, "
            f"{self.violations} invariant violations"
        )


def choose_kill(rng: random.Random, trial: harness.Trial) -> tuple[str, object] | None:
    """``("point", (name, step))`` or ``("after", seconds)``, or None if nothing can fire."""
    if rng.random() < 0.5:
        seconds = rng.uniform(0, EARLY) if rng.random() < 0.5 else rng.uniform(EARLY, LATE)
        return "after", round(seconds, 2)
    points = tiny.KILL_POINTS + (tiny.REMOTE_KILL_POINTS if trial.s3 is not None else ())
    point = rng.choice(points)
    if point in EXACT_STEP_POINTS:
        later = [s for s in harness.STEPS if s > trial.latest_checkpoint_step()]
        if not later:
            return None
        return "point", (point, rng.choice(later))
    return "point", (point, rng.choice(harness.NEW_BEST_STEPS))


def run_episode(
    seed: int,
    root: Path,
    tally: Tally,
    kills_left: int,
    log,
    s3=None,
    ram: bool = False,
    server=None,
) -> None:
    """One trial from its own seed: kills, a recovery run, the invariants."""
    rng = random.Random(seed)
    trial = harness.Trial(root, keep=rng.choice((1, 2, 3)), s3=s3, ram=ram, server=server)
    tally.episodes += 1
    killed = []
    try:
        for _ in range(min(rng.choice((1, 1, 2, 3)), kills_left)):
            chosen = choose_kill(rng, trial)
            if chosen is None:
                break
            tally.attempts += 1
            kind, what = chosen
            if kind == "after":
                if not trial.kill_after(what):
                    break  # training finished first
                label, tally.early = f"after {what} s", tally.early + (what < EARLY)
                tally.by_kind["early" if what < EARLY else "later"] += 1
            else:
                if not trial.kill_at(*what):
                    break  # training finished before the point was reached
                label = f"{what[0]}:{what[1]}"
                tally.by_kind[what[0]] += 1
            killed.append(label)
            tally.kills += 1
        trial.recover()
        trial.check()
    except Exception as err:  # noqa: BLE001 - every failure is counted and the campaign goes on
        tally.violations += 1
        message = (
            f"episode seed {seed} in {root} (keep={trial.keep}, kills {killed}, "
            f"processes {trial.log}): {err}"
        )
        tally.failures.append(message)
        log(f"VIOLATION {message}\n{traceback.format_exc()}")
        return
    tally.recovered += len(killed)
    log(f"episode seed {seed}: keep={trial.keep} kills {killed or 'none'} recovered")
    shutil.rmtree(root, ignore_errors=True)  # violations keep their directory for post-mortems


@contextlib.contextmanager
def servers(store: str, tracking_server: bool, base: Path):
    """``(S3 server for --store s3, mlflow server for --server)``, each None when not asked."""
    with contextlib.ExitStack() as stack:
        s3 = None
        if store == "s3":
            from s3 import s3_server

            s3 = stack.enter_context(s3_server(str(base / "moto.log")))
        mlflow = None
        if tracking_server:
            from mlflow_checks import MlflowServer

            mlflow = MlflowServer(str(base / "mlflow-server")).start()
            stack.callback(mlflow.stop)
        yield s3, mlflow


def run(
    kills: int,
    seed: int | None = None,
    workdir: str | None = None,
    log=print,
    store: str = "local",
    tracking_server: bool = False,
) -> Tally:
    """Run episodes until ``kills`` processes were killed; return the tally."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    base = Path(workdir or tempfile.mkdtemp(prefix="mlflow-best-export-campaign-"))
    base.mkdir(parents=True, exist_ok=True)
    where = "an mlflow server" if tracking_server else "SQLite"
    log(f"campaign seed {seed}, model directories {store}, MLflow {where}, work directory {base}")
    tally = Tally()
    with servers(store, tracking_server, base) as (s3, mlflow):
        # A bound on attempts, so a kill that never fires cannot loop forever.
        while tally.kills < kills and tally.attempts < 4 * kills + 10:
            episode_seed = rng.randrange(2**32)
            root = base / f"episode-{tally.episodes + 1}"
            left = kills - tally.kills
            run_episode(episode_seed, root, tally, left, log, s3, store == "ram", mlflow)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="how many processes to kill")
    parser.add_argument("--seed", type=int, default=None, help="campaign seed (default: random)")
    parser.add_argument("--replay", type=int, default=None, help="run one episode of this seed")
    parser.add_argument("--store", choices=("local", "ram", "s3"), default="local")
    parser.add_argument(
        "--server", action="store_true", help="MLflow behind a real `mlflow server`, not SQLite"
    )
    parser.add_argument("--workdir", default=None, help="where episodes run (default: a temp dir)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.replay is not None:
        tally = Tally()
        base = Path(args.workdir or tempfile.mkdtemp(prefix="mlflow-best-export-replay-"))
        with servers(args.store, args.server, base) as (s3, mlflow):
            ram = args.store == "ram"
            run_episode(args.replay, base / "episode", tally, 3, log, s3, ram, mlflow)
    else:
        tally = run(args.kills, args.seed, args.workdir, log, args.store, args.server)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(tally.by_kind.items()))
    print(
        f"{tally.episodes} episodes, {tally.attempts} kill attempts, {tally.early} kills in "
        f"the first {EARLY:.0f} s of a process; by kind: {kinds}; "
        f"{time.monotonic() - start:.0f} s",
        flush=True,
    )
    print(tally.line(), flush=True)
    return 1 if tally.violations else 0


if __name__ == "__main__":
    sys.exit(main())
