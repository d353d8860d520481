"""The connector's machine-readable record: one line per state change, on stderr, with a
fixed prefix and a versioned JSON body. `kubectl hpc jobs` reads the last one from the pod
log; human log lines may change wording, this may not (bump `v` for an incompatible change).

    hpc-offload-state: {"v": 1, "job": "4711", "state": "PENDING", "reason": "Priority", ...}
"""

from __future__ import annotations

import json
import time
from typing import Any, BinaryIO

PREFIX = "hpc-offload-state: "
VERSION = 1
FIELDS = ("job", "state", "reason", "position", "start", "node", "exit", "time")


def line(**values: Any) -> str:
    """One record line (without the newline); unknown fields are refused."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown record field(s): {', '.join(sorted(unknown))}")
    body = {"v": VERSION, **{k: v for k, v in values.items() if v is not None}}
    body.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return PREFIX + json.dumps(body, sort_keys=True, ensure_ascii=True)


def write(sink: BinaryIO | None, **values: Any) -> None:
    if sink is None:
        return
    sink.write((line(**values) + "\n").encode())
    sink.flush()


def parse(text: str) -> dict[str, Any] | None:
    """The record in one log line (a CRI/kubectl log line may carry a timestamp before it), or
    None; a record of a newer major version is not guessed at."""
    at = text.find(PREFIX)
    if at < 0:
        return None
    try:
        body = json.loads(text[at + len(PREFIX):])
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("v") != VERSION:
        return None
    return body


def last(log_text: str) -> dict[str, Any] | None:
    """The newest record in a pod log."""
    for text in reversed(log_text.splitlines()):
        found = parse(text)
        if found is not None:
            return found
    return None
