"""Parsing and validation of the `hpc.offload/*` annotations.

Everything a user can get wrong is caught here, at admission, with a message that names the
annotation, the value and what is allowed: a pod that is admitted must be a pod the connector
can run. Value checks reuse connector.spec's validators so the webhook and the connector
agree on every value; only the annotation-specific wrapping lives here.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from connector.backends.slurm_options import parse_sbatch_args
from connector.errors import SpecError
from connector.spec import (
    LOG_MODES,
    RUNTIMES,
    StagePair,
    check_name,
    check_positive_int,
    check_time_limit,
    parse_duration,
    parse_staging,
)

PREFIX = "hpc.offload/"
BACKEND = PREFIX + "backend"
JOB_SPEC = PREFIX + "job-spec"
STATUS = PREFIX + "status"
INJECTED = "injected"

# Keys a user sets (DESIGN.md, Annotations) and keys the webhook writes itself.
INPUT_KEYS = (
    "backend", "container", "runtime", "image", "partition", "account", "qos", "time",
    "nodes", "ntasks", "gpus", "sbatch-args", "script", "poll-interval", "logs",
    "stage-in", "stage-out",
)
OUTPUT_KEYS = ("job-spec", "status")
KNOWN_KEYS = INPUT_KEYS + OUTPUT_KEYS

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_GPUS = re.compile(r"^(?:([A-Za-z0-9_.-]+):)?(\d+)$")
_IMAGE = re.compile(r"^[^\s\x00-\x1f\x7f'\"\\`$;&|<>]+$")


class AdmissionDenied(Exception):
    """A pod the webhook refuses: `code` 400 for a bad value, 403 for a policy rule."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Annotations:
    """The parsed `hpc.offload/*` annotations of one pod (None: not given)."""

    backend: str | None = None
    container: str | None = None
    runtime: str | None = None
    image: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    nodes: int | None = None
    ntasks: int | None = None
    gpus: str | None = None  # the gres value ("gpu:2", "gpu:a100:2"); "" = explicitly none
    sbatch_args: tuple[str, ...] = ()
    script: str | None = None
    poll_interval: float | None = None
    logs: str | None = None
    stage_in: tuple[StagePair, ...] = ()
    stage_out: tuple[StagePair, ...] = ()
    injected: bool = False

    @property
    def offloaded(self) -> bool:
        """Only `backend` triggers offloading."""
        return self.backend is not None


def quote(value: Any) -> str:
    """A value as it appears in messages: JSON-quoted, so spaces and empties are visible."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def denied(key: str, value: Any, allowed: str) -> AdmissionDenied:
    return AdmissionDenied(f"{PREFIX}{key}: {quote(value)} is not allowed; {allowed}")


def parse_annotations(annotations: Mapping[str, Any] | None) -> Annotations:
    """Parse and validate the `hpc.offload/*` keys; others are ignored.

    Raises AdmissionDenied(400) naming the first bad annotation. Results are cached by the
    (small) tuple of our keys, since a Job's or Deployment's pods all carry the same ones.
    """
    if not annotations:
        return Annotations()
    if not isinstance(annotations, Mapping):
        raise AdmissionDenied("metadata.annotations: must be a mapping of strings")
    ours: list[tuple[str, Any]] = []
    for key, value in annotations.items():
        if isinstance(key, str) and key.startswith(PREFIX):
            if not isinstance(value, str):
                raise AdmissionDenied(
                    f"{key}: {value!r} must be a string; quote it in YAML ({quote(str(value))})"
                )
            ours.append((key, value))
    if not ours:
        return Annotations()
    return _parse(tuple(sorted(ours)))


@lru_cache(maxsize=512)
def _parse(items: tuple[tuple[str, str], ...]) -> Annotations:
    values: dict[str, Any] = {}
    for key, value in items:
        name = key[len(PREFIX):]
        parser = _PARSERS.get(name)
        if parser is None:
            raise AdmissionDenied(_unknown_message(key))
        try:
            values.update(parser(name, value))
        except SpecError as exc:
            raise AdmissionDenied(exc.message) from None
    parsed = Annotations(**values)
    if not parsed.offloaded and not parsed.injected:
        given = ", ".join(k for k, _ in items)
        raise AdmissionDenied(
            f"{BACKEND}: missing; it is required to offload a pod (found {given}). "
            f"Add {BACKEND}: PROFILE, or remove the {PREFIX}* annotations"
        )
    return parsed


def _unknown_message(key: str) -> str:
    name = key[len(PREFIX):]
    close = difflib.get_close_matches(name, INPUT_KEYS, n=1)
    hint = f" (did you mean {PREFIX}{close[0]}?)" if close else ""
    known = ", ".join(INPUT_KEYS)
    return f"{key}: unknown annotation{hint}; known {PREFIX}* annotations: {known}"


def _what(name: str) -> str:
    return PREFIX + name


def _backend(name: str, value: str) -> dict[str, Any]:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        raise denied(
            name, value,
            "use the name of a backend profile (ConfigMap) in this namespace: lower-case "
            "letters, digits, '-' and '.', starting and ending with a letter or digit, "
            "at most 253 characters",
        )
    return {"backend": value}


def _container(name: str, value: str) -> dict[str, Any]:
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise denied(name, value, "use the name of one of the pod's containers")
    return {"container": value}


def _runtime(name: str, value: str) -> dict[str, Any]:
    runtime = value.strip().lower()
    if runtime not in RUNTIMES:
        raise denied(name, value, f"use one of {', '.join(RUNTIMES)}")
    return {"runtime": runtime}


def _image(name: str, value: str) -> dict[str, Any]:
    image = value.strip()
    if not image or len(image) > 1024 or image.startswith("-") or not _IMAGE.match(image):
        raise denied(
            name, value,
            "use an image the HPC runtime understands (docker://registry/name:tag, a .sif "
            "path, an image directory), without spaces, quotes or shell characters, not "
            "starting with '-'",
        )
    return {"image": image}


def _slurm_name(name: str, value: str) -> dict[str, Any]:
    return {name: check_name(value, _what(name))}


def _time(name: str, value: str) -> dict[str, Any]:
    return {"time": check_time_limit(value, _what(name))}


def _count(name: str, value: str) -> dict[str, Any]:
    return {name: check_positive_int(value, _what(name))}


def _gpus(name: str, value: str) -> dict[str, Any]:
    match = _GPUS.match(value.strip())
    if not match:
        raise denied(name, value, "use a GPU count (2) or TYPE:COUNT (a100:2); 0 for none")
    kind, count = match.group(1), int(match.group(2))
    if count == 0:
        return {"gpus": ""}
    return {"gpus": f"gpu:{kind}:{count}" if kind else f"gpu:{count}"}


def _sbatch_args(name: str, value: str) -> dict[str, Any]:
    return {"sbatch_args": tuple(parse_sbatch_args(value, _what(name)))}


def _script(name: str, value: str) -> dict[str, Any]:
    if not value.strip():
        raise denied(name, value, "give a batch script starting with #! (e.g. #!/bin/bash)")
    if not value.lstrip().startswith("#!"):
        first = value.lstrip().splitlines()[0]
        raise denied(
            name, first[:60],
            "sbatch needs a script whose first line is #! and an interpreter (#!/bin/bash)",
        )
    if "\x00" in value:
        raise AdmissionDenied(f"{PREFIX}{name}: the script may not contain NUL bytes")
    return {"script": value}


def _poll_interval(name: str, value: str) -> dict[str, Any]:
    return {"poll_interval": parse_duration(value, _what(name))}


def _logs(name: str, value: str) -> dict[str, Any]:
    mode = value.strip().lower()
    if mode not in LOG_MODES:
        raise denied(name, value, f"use one of {', '.join(LOG_MODES)}")
    return {"logs": mode}


def _staging(name: str, value: str) -> dict[str, Any]:
    pairs = parse_staging(value, _what(name))
    if not pairs:
        raise denied(name, value, "use podPath:hpcPath[,podPath:hpcPath…]")
    for pair in pairs:
        if not pair.src.startswith("/"):
            raise denied(
                name, value,
                f"the pod path {quote(pair.src)} must be absolute (podPath:hpcPath, "
                "e.g. /data/in.csv:input/in.csv)",
            )
    return {name.replace("-", "_"): tuple(pairs)}


def _job_spec(name: str, value: str) -> dict[str, Any]:
    return {}  # the webhook's own output; rewritten on mutation, trusted on an injected pod


def _status(name: str, value: str) -> dict[str, Any]:
    if value != INJECTED:
        raise denied(name, value, f"it is set by the webhook only (to {quote(INJECTED)})")
    return {"injected": True}


_PARSERS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "backend": _backend,
    "container": _container,
    "runtime": _runtime,
    "image": _image,
    "partition": _slurm_name,
    "account": _slurm_name,
    "qos": _slurm_name,
    "time": _time,
    "nodes": _count,
    "ntasks": _count,
    "gpus": _gpus,
    "sbatch-args": _sbatch_args,
    "script": _script,
    "poll-interval": _poll_interval,
    "logs": _logs,
    "stage-in": _staging,
    "stage-out": _staging,
    "job-spec": _job_spec,
    "status": _status,
}
assert set(_PARSERS) == set(KNOWN_KEYS)
