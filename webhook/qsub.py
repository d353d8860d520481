"""What a Grid Engine job script asks for, from its `#$` lines.

qsub reads every script line whose first two characters are `#$` as qsub options (sge_submit
man page). Only the options the cluster policy constrains are read here: the hard run time
(`-l h_rt=`), queues (`-q`, `-masterq`), the project (`-P`, Grid Engine's account), GPU
resources (`-l gpu…=N`, per slot) and slots (`-pe NAME N`). Every word that starts with `-` is
looked at, so no value of another option can hide one of these; what cannot be read for sure
(`-t` arrays, `-@` option files, a `-C` prefix) is a ScriptError.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from webhook.sbatch import Directive, ScriptError

PREFIX = "#$"
_COUNT = re.compile(r"\d+")
_TIME = re.compile(r"(?:(\d+):)?(?:(\d+):)?(\d+)")
UNREADABLE = {"-t": "a job array", "-@": "options from a file", "-C": "another directive prefix"}


@dataclass
class QsubRequest:
    """The constrained options of a Grid Engine script, each with where it was written."""

    hard_times: list[Directive] = field(default_factory=list)  # h_rt values
    queues: list[Directive] = field(default_factory=list)
    projects: list[Directive] = field(default_factory=list)
    gpus: list[Directive] = field(default_factory=list)  # gpu-like -l resources
    slots: list[Directive] = field(default_factory=list)  # -pe NAME RANGE
    lines: int = 0


def script_request(script: str, where: str = "hpc.offload/script") -> QsubRequest:
    request = QsubRequest()
    for lineno, line in enumerate(script.split("\n"), start=1):
        if not line.startswith(PREFIX):
            continue
        request.lines += 1
        source = f"{where} line {lineno} ({line.strip()[:80]!r})"
        try:
            words = shlex.split(line[len(PREFIX):], comments=False, posix=True)
        except ValueError as exc:
            raise ScriptError(f"{source}: cannot be read ({exc})") from None
        _read(words, source, request)
    return request


def _read(words: list[str], source: str, request: QsubRequest) -> None:
    soft = False
    for index, word in enumerate(words):
        value = words[index + 1] if index + 1 < len(words) else ""
        if word in UNREADABLE:
            raise ScriptError(f"{source}: {word} ({UNREADABLE[word]}) cannot be checked")
        if word in ("-hard", "-soft"):
            soft = word == "-soft"
        elif word in ("-q", "-masterq"):
            request.queues.append(Directive("queue", value, source))
        elif word == "-P":
            request.projects.append(Directive("project", value, source))
        elif word == "-pe":
            slots = words[index + 2] if index + 2 < len(words) else ""
            request.slots.append(Directive("pe", slots, source))
        elif word == "-l":
            for item in value.split(","):
                name, _, amount = item.partition("=")
                name = name.strip().lower()
                if name in ("h_rt", "rt") and not soft:
                    request.hard_times.append(Directive("h_rt", amount.strip(), source))
                elif "gpu" in name:
                    request.gpus.append(Directive(name, amount.strip(), source))


def seconds(directive: Directive) -> int:
    """Grid Engine time: [[hours:]minutes:]seconds, or INFINITY (0: unlimited)."""
    value = (directive.value or "").strip()
    if value.upper() in ("INFINITY", "INFINITE"):
        return 0
    match = _TIME.fullmatch(value)
    if not match:
        raise ScriptError(f"{directive.source}: h_rt={value!r} is not a time the policy can "
                          "compare (use H:MM:SS)")
    parts = [int(p) for p in match.groups() if p is not None]
    total = 0
    for part in parts:
        total = total * 60 + part
    return total


def max_slots(directive: Directive) -> int:
    """The largest slot count of a `-pe NAME RANGE` (`4`, `2-8`, `8-`)."""
    value = (directive.value or "").strip()
    numbers = [int(n) for n in _COUNT.findall(value)]
    if not numbers or value.endswith("-") or not re.fullmatch(r"[\d,-]+", value):
        raise ScriptError(f"{directive.source}: -pe … {value!r}: the slot count cannot be "
                          "counted (give a number or a closed range)")
    return max(numbers)


def gpu_total(request: QsubRequest) -> tuple[int, list[Directive]]:
    """GPUs asked: each gpu-like resource is per slot (a consumable), times the slots."""
    slots = max((max_slots(d) for d in request.slots), default=1)
    total, sources = 0, []
    for directive in request.gpus:
        value = directive.value or ""
        if not _COUNT.fullmatch(value):
            raise ScriptError(f"{directive.source}: {directive.name}={value!r} cannot be counted")
        if int(value):
            total += int(value) * slots
            sources.append(directive)
    if sources:
        sources += request.slots
    return total, sources
