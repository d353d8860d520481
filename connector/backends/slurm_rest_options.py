"""What a job asks SLURM for, as slurmrestd's submit fields. slurmrestd reads no `#SBATCH` line
(checked on 22.05: a script's `#SBATCH --time=3` leaves the job UNLIMITED), so the neutral
resources of a rendered job and the `#SBATCH` lines of a verbatim script (the paper's mode)
are both turned into fields here."""

from __future__ import annotations

import re
import shlex
from typing import Any

from connector.errors import SpecError
from connector.spec import Resources, parse_extra_args

# extra sbatch flags (hpc.offload/sbatch-args) that have a submit field: option -> field
REST_EXTRA_ALLOWED = {"--constraint": "constraints", "--reservation": "reservation",
                      "--requeue": "requeue", "--no-requeue": "requeue", "--nice": "nice"}


def minutes(seconds: int) -> int:
    """Seconds as whole minutes, rounded up (0 stays 0: no limit)."""
    return 0 if seconds == 0 else max(1, -(-int(seconds) // 60))


def resource_fields(res: Resources) -> dict[str, Any]:
    """The neutral resources as SubmitRequest keyword arguments (extra flags checked here)."""
    fields: dict[str, Any] = {
        "partition": res.queue, "account": res.account, "qos": res.qos,
        "time_limit_minutes": None if res.time_limit is None else minutes(res.time_limit),
        "nodes": res.nodes, "tasks": res.tasks, "cpus_per_task": res.cpus_per_task,
        "memory_per_node_mb": res.memory_mb, "gpus": res.gpus, "gpu_type": res.gpu_type,
    }
    for item in parse_extra_args(list(res.extra_args), "sbatch-args"):
        option, eq, value = item.partition("=")
        if option not in REST_EXTRA_ALLOWED:
            allowed = ", ".join(sorted(REST_EXTRA_ALLOWED))
            raise SpecError(f"sbatch-args: {option!r} has no slurmrestd field; slurm-rest takes {allowed}")
        takes_value = option not in ("--requeue", "--no-requeue")
        if takes_value != bool(eq):
            raise SpecError(f"sbatch-args: {option} " + ("needs a value, as OPTION=VALUE" if takes_value
                                                         else "takes no value"))
        if option == "--nice":
            if not re.fullmatch(r"-?\d+", value):
                raise SpecError(f"sbatch-args: --nice={value!r} is not a whole number")
            fields["nice"] = int(value)
        elif option in ("--requeue", "--no-requeue"):
            fields["requeue"] = option == "--requeue"
        else:
            fields[REST_EXTRA_ALLOWED[option]] = value
    return {k: v for k, v in fields.items() if v is not None}


# --- a verbatim script's #SBATCH lines ---------------------------------------------------------

_SHORT = {"-J": "--job-name", "-o": "--output", "-e": "--error", "-t": "--time", "-p": "--partition",
          "-A": "--account", "-q": "--qos", "-N": "--nodes", "-n": "--ntasks", "-c": "--cpus-per-task",
          "-C": "--constraint", "-D": "--chdir"}
_FLAGS = {"--requeue", "--no-requeue"}
_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_GPU = re.compile(r"^gpu(?::([A-Za-z0-9_.-]+))?:(\d+)$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def directive_options(script: str) -> list[tuple[str, str | None]]:
    """The `#SBATCH` options as sbatch reads them: from the lines before the first command,
    long names (`-t 5` → ("--time", "5")); a line that is not shell words is skipped."""
    options: list[tuple[str, str | None]] = []
    for line in script.splitlines()[1:] if script.startswith("#!") else script.splitlines():
        text = line.strip()
        if not text or (text.startswith("#") and not text.startswith("#SBATCH")):
            continue
        if not text.startswith("#SBATCH"):
            break  # sbatch stops at the first command
        try:
            words = shlex.split(text[len("#SBATCH"):], comments=True)
        except ValueError:
            continue
        index = 0
        while index < len(words):
            word = words[index]
            index += 1
            if word.startswith("--"):
                name, eq, value = word.partition("=")
                if not eq and name not in _FLAGS and index < len(words) and not words[index].startswith("-"):
                    value, eq = words[index], "="
                    index += 1
                options.append((name, value if eq else None))
            elif word.startswith("-") and len(word) >= 2:
                name = _SHORT.get(word[:2], word[:2])
                value = word[2:] or (words[index] if index < len(words) else "")
                if not word[2:]:
                    index += 1
                options.append((name, value))
    return options


def parse_time(text: str) -> int | None:
    """sbatch's --time forms (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; UNLIMITED) as minutes."""
    value = text.strip().upper()
    if value in ("UNLIMITED", "INFINITE", "-1"):
        return 0
    match = _TIME.match(value)
    if not match:
        return None
    days, a, b, c = (int(g) if g is not None else None for g in match.groups())
    assert a is not None
    if days is not None:  # D-H[:M[:S]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = a * 3600 + (b or 0) * 60 + c
    elif b is not None:  # M:S
        seconds = a * 60 + b
    else:  # M
        seconds = a * 60
    return minutes(seconds)


def _memory_mb(text: str) -> int | None:
    match = _MEM.match(text.strip())
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2).upper() or "M"
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return max(1, int(number * factor))


def _count(text: str) -> int | None:
    head = text.split("-", 1)[0]  # a min-max range: the minimum
    return int(head) if head.isdigit() else None


def directive_fields(script: str) -> tuple[dict[str, Any], list[str]]:
    """A verbatim script's #SBATCH lines as SubmitRequest keyword arguments (`stdout`/`stderr`
    still holding SLURM's `%` patterns, `workdir` for --chdir), and the options that have no
    field here, to be named in the pod log."""
    fields: dict[str, Any] = {}
    ignored: list[str] = []
    simple = {"--job-name": "name", "--output": "stdout", "--error": "stderr", "--partition": "partition",
              "--account": "account", "--qos": "qos", "--constraint": "constraints",
              "--reservation": "reservation", "--chdir": "workdir"}
    for name, value in directive_options(script):
        parsed: Any = None
        if name in simple:
            parsed = value or None
            key = simple[name]
        elif name == "--time":
            parsed, key = parse_time(value or ""), "time_limit_minutes"
        elif name in ("--nodes", "--ntasks", "--cpus-per-task"):
            parsed = _count(value or "")
            key = {"--nodes": "nodes", "--ntasks": "tasks", "--cpus-per-task": "cpus_per_task"}[name]
        elif name == "--mem":
            parsed, key = _memory_mb(value or ""), "memory_per_node_mb"
        elif name == "--gres" and value and (gpu := _GPU.match(value)):
            fields["gpu_type"] = gpu.group(1)
            parsed, key = int(gpu.group(2)), "gpus"
        elif name in _FLAGS:
            parsed, key = name == "--requeue", "requeue"
        elif name == "--comment":
            continue  # the connector's tag goes there (reattach)
        if parsed is None:
            ignored.append(f"{name}={value}" if value else name)
            continue
        fields[key] = parsed
    return {k: v for k, v in fields.items() if v is not None}, ignored


def expand_output_pattern(pattern: str, job_id: str, name: str, user: str) -> str:
    """SLURM's filename patterns this backend can know (%j %x %u %%); others stay as written."""
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "%" and index + 1 < len(pattern):
            code = pattern[index + 1]
            known = {"j": job_id, "x": name, "u": user, "%": "%"}
            if code in known:
                out.append(known[code])
                index += 2
                continue
        out.append(char)
        index += 1
    return "".join(out)
