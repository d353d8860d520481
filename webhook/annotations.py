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
    MAX_COUNT,
    RUNTIMES,
    WHOLE_POD,
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

# Patterns are used with fullmatch(): `$` would also accept a trailing newline.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_GPUS = re.compile(r"(?:([A-Za-z0-9_.-]+):)?(\d+)")
_IMAGE = re.compile(r"[^\s\x00-\x1f\x7f'\"\\`$;&|<>]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Size limits, checked before any parsing (a 2 MiB value must not be parsed, nor cached).
# A script is carried twice by the mutated pod (here and in the job spec), and Kubernetes
# allows 256 KiB of annotations in all: see check_annotations_size.
MAX_SCRIPT_BYTES = 128 * 1024
MAX_JOB_SPEC_BYTES = 256 * 1024
MAX_VALUE_BYTES = 4096
MAX_CACHED_BYTES = 8192  # a parse result is cached only for annotations this small
MAX_ANNOTATIONS_BYTES = 256 * 1024  # Kubernetes' TotalAnnotationSizeLimitB
MAX_POLL_INTERVAL = 3600.0
MAX_QUOTED = 256  # characters of a value shown in a message
# Lists may be written over several lines in YAML: their line breaks and tabs separate items.
_LISTS = ("sbatch-args", "stage-in", "stage-out")
_LIST_SPACE = str.maketrans("\t\n\r", "   ")


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
    """A value as it appears in messages: JSON-quoted, so spaces, empties and control
    characters are visible; cut short, so a huge value never makes a huge message."""
    if isinstance(value, str):
        cut = value if len(value) <= MAX_QUOTED else value[:MAX_QUOTED] + "…"
        return json.dumps(cut, ensure_ascii=False)
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "…"


def shown_key(key: str) -> str:
    """An annotation key as it appears in messages: as written, unless it is long or holds
    characters a terminal would act on."""
    return key if len(key) <= 100 and key.isprintable() else quote(key)


def denied(key: str, value: Any, allowed: str) -> AdmissionDenied:
    return AdmissionDenied(f"{PREFIX}{key}: {quote(value)} is not allowed; {allowed}")


def parse_annotations(annotations: Mapping[str, Any] | None) -> Annotations:
    """Parse and validate the `hpc.offload/*` keys; others are ignored.

    Raises AdmissionDenied(400) naming the first bad annotation. Results are cached by the
    tuple of our keys when it is small, since a Job's or Deployment's pods all carry the same
    ones; a value over its size limit is refused before it is parsed.
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
                    f"{shown_key(key)}: {quote(value)} must be a string; quote it in YAML "
                    f"({quote(str(value))})")
            _check_size(key, value)
            ours.append((key, value))
    if not ours:
        return Annotations()
    items = tuple(sorted(ours))
    if sum(len(k) + len(v) for k, v in items) <= MAX_CACHED_BYTES:
        return _parse(items)
    return _parse_items(items)


def _check_size(key: str, value: str) -> None:
    name = key[len(PREFIX):]
    limit = {"script": MAX_SCRIPT_BYTES, "job-spec": MAX_JOB_SPEC_BYTES}.get(name,
                                                                         MAX_VALUE_BYTES)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise AdmissionDenied(f"{shown_key(key)}: the value is {size} bytes; at most {limit} "
                              "bytes are accepted")
    text = value if name not in _LISTS else value.translate(_LIST_SPACE)
    if name not in ("script", "job-spec") and _CONTROL.search(text):
        raise AdmissionDenied(f"{shown_key(key)}: {quote(value)} contains a control character "
                              "(a line break, tab…); the value must be one line of text")


def check_annotations_size(annotations: Mapping[str, Any]) -> None:
    """The mutated pod's annotations must fit Kubernetes' limit, else the API server refuses
    the pod with a bare "Too long" after admission; say why here instead."""
    size = sum(len(str(k).encode("utf-8", "surrogatepass"))
               + len(str(v).encode("utf-8", "surrogatepass")) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        raise AdmissionDenied(
            f"metadata.annotations: the offloaded pod's annotations would be {size} bytes, over "
            f"Kubernetes' limit of {MAX_ANNOTATIONS_BYTES} bytes ({PREFIX}script is carried "
            f"twice, as written and inside {JOB_SPEC}); shorten {PREFIX}script, e.g. by "
            "staging a file it runs (hpc.offload/stage-in)")


def _parse_items(items: tuple[tuple[str, str], ...]) -> Annotations:
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


_parse = lru_cache(maxsize=512)(_parse_items)


def _unknown_message(key: str) -> str:
    name = key[len(PREFIX):]
    close = difflib.get_close_matches(name, INPUT_KEYS, n=1)
    hint = f" (did you mean {PREFIX}{close[0]}?)" if close else ""
    known = ", ".join(INPUT_KEYS)
    return f"{shown_key(key)}: unknown annotation{hint}; known {PREFIX}* annotations: {known}"


def _what(name: str) -> str:
    return PREFIX + name


def _backend(name: str, value: str) -> dict[str, Any]:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise denied(
            name, value,
            "use the name of a backend profile (ConfigMap) in this namespace: lower-case "
            "letters, digits, '-' and '.', starting and ending with a letter or digit, "
            "at most 253 characters",
        )
    return {"backend": value}


def _container(name: str, value: str) -> dict[str, Any]:
    if value == WHOLE_POD:  # the whole pod, every container, as one HPC job
        return {"container": value}
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise denied(name, value, f'use the name of one of the pod\'s containers, or "{WHOLE_POD}" '
                     "for the whole pod")
    return {"container": value}


def _runtime(name: str, value: str) -> dict[str, Any]:
    runtime = value.strip().lower()
    if runtime not in RUNTIMES:
        raise denied(name, value, f"use one of {', '.join(RUNTIMES)}")
    return {"runtime": runtime}


def _image(name: str, value: str) -> dict[str, Any]:
    image = value.strip()
    if not image or len(image) > 1024 or image.startswith("-") or not _IMAGE.fullmatch(image):
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
    count = check_positive_int(value, _what(name))
    if count > MAX_COUNT:
        raise denied(name, value, f"use a whole number from 1 to at most {MAX_COUNT}")
    return {name: count}


def _gpus(name: str, value: str) -> dict[str, Any]:
    match = _GPUS.fullmatch(value.strip())
    if not match:
        raise denied(name, value, "use a GPU count (2) or TYPE:COUNT (a100:2); 0 for none")
    kind, count = match.group(1), int(match.group(2))
    if count > MAX_COUNT:
        raise denied(name, value, f"use a GPU count of at most {MAX_COUNT}")
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
    seconds = parse_duration(value, _what(name))
    if seconds > MAX_POLL_INTERVAL:
        raise denied(name, value, "use at most 1h: the connector would not notice the job's "
                     "end for that long")
    return {"poll_interval": seconds}


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
