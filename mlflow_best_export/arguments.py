"""Checks of constructor arguments, at construction: a ValueError names the argument and
the fix, instead of a failure mid-training."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from mlflow_best_export import fs
from mlflow_best_export.exports import METADATA_FILENAME


def validate_flag(value: Any, argument: str) -> bool:
    """``value`` if it is a bool; else a ValueError naming ``argument``."""
    if not isinstance(value, bool):
        raise ValueError(f"`{argument}` must be True or False, got {value!r}.")
    return value


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(
            f"`name` is used as a directory under <model_dir>/export/ and must not contain "
            f"path separators or be '.' or '..'; got {name!r}."
        )
    return name


def validate_serving_input_receiver_fn(fn: Any) -> Any:
    if fn is None or not callable(fn):
        raise ValueError(
            "`serving_input_receiver_fn` must be a function that takes no arguments and "
            "returns a ServingInputReceiver, e.g. "
            "tf.estimator.export.build_raw_serving_input_receiver_fn(...); "
            f"got {fn!r}."
        )
    return fn


def validate_event_file_pattern(pattern: Any) -> str | None:
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(
            "`event_file_pattern` must be a glob relative to the model directory, such as "
            f"'eval/*.tfevents.*', or None to ignore the eval history; got {pattern!r}."
        )
    if os.path.isabs(pattern):
        raise ValueError(
            "`event_file_pattern` is relative to the model directory; got the absolute "
            f"path {pattern!r}."
        )
    return pattern


def validate_assets_extra(assets_extra: Any) -> dict[str, str]:
    if assets_extra is None:
        return {}
    if not isinstance(assets_extra, Mapping):
        raise ValueError(
            "`assets_extra` must be a dict of {destination path inside assets.extra: source "
            f"file}}; got {type(assets_extra).__name__}."
        )
    checked = {}
    for dest, source in assets_extra.items():
        if not isinstance(dest, str) or not dest.strip():
            raise ValueError(f"`assets_extra` keys must be non-empty relative paths; got {dest!r}.")
        if os.path.isabs(dest) or dest.startswith(("/", "\\")):
            raise ValueError(
                f"`assets_extra` key {dest!r} is absolute; keys are destinations relative to "
                f"the export's assets.extra directory, e.g. 'vocab.txt'."
            )
        parts = re.split(r"[/\\]", dest)
        if ".." in parts:
            raise ValueError(
                f"`assets_extra` key {dest!r} contains '..'; destinations must stay inside "
                f"assets.extra."
            )
        if os.path.normpath(dest) == METADATA_FILENAME:
            raise ValueError(
                f"`assets_extra` key {dest!r} is reserved for the exporter's own metadata; "
                f"choose another destination name."
            )
        if not isinstance(source, str | os.PathLike):
            raise ValueError(
                f"`assets_extra[{dest!r}]` must be the path of a source file; got {source!r}."
            )
        source = os.fspath(source)
        fs.check_filesystem(source)
        if not fs.exists(source):
            raise ValueError(
                f"`assets_extra[{dest!r}]`: the source file {source!r} does not exist."
            )
        if fs.isdir(source):
            raise ValueError(
                f"`assets_extra[{dest!r}]`: {source!r} is a directory; list its files one by one."
            )
        checked[dest] = source
    return checked
