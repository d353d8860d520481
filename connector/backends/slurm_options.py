"""SLURM's words for the neutral job options: `#SBATCH` directives and the allow-list of extra
sbatch flags a user may add (`hpc.offload/sbatch-args`). Kept apart from the backend so the
webhook can check those flags at admission without loading a backend."""

from __future__ import annotations

from collections.abc import Sequence

from connector.errors import SpecError
from connector.spec import Resources, parse_extra_args

# sbatch options a user may add. Anything that would change where output goes, who runs the
# job or what is run (--output, --wrap, --uid, --export…) is the connector's to set.
SBATCH_ALLOWED: dict[str, bool] = {  # option -> takes a value
    "--constraint": True,
    "--exclusive": False,
    "--mail-type": True,
    "--mail-user": True,
    "--reservation": True,
    "--licenses": True,
    "--mem-per-cpu": True,
    "--mem-per-gpu": True,
    "--cpus-per-gpu": True,
    "--gpus-per-node": True,
    "--gpus-per-task": True,
    "--ntasks-per-node": True,
    "--tmp": True,
    "--hint": True,
    "--distribution": True,
    "--threads-per-core": True,
    "--signal": True,
    "--begin": True,
    "--nice": True,
    "--exclude": True,
    "--nodelist": True,
    "--requeue": False,
    "--no-requeue": False,
    "--switches": True,
    "--wckey": True,
    "--network": True,
    "--cluster-constraint": True,
}


def parse_sbatch_args(value: str | Sequence[str], what: str = "sbatch-args") -> list[str]:
    """Extra `--opt=value` flags, each checked against SBATCH_ALLOWED."""
    result = parse_extra_args(value, what)
    for item in result:
        option, eq, _arg = item.partition("=")
        if option not in SBATCH_ALLOWED:
            allowed = ", ".join(sorted(SBATCH_ALLOWED))
            raise SpecError(f"{what}: {option!r} is not allowed; allowed options: {allowed}")
        if SBATCH_ALLOWED[option] and not eq:
            raise SpecError(f"{what}: {option} needs a value, as {option}=VALUE")
        if not SBATCH_ALLOWED[option] and eq:
            raise SpecError(f"{what}: {option} takes no value")
    return result


def format_time(seconds: int) -> str:
    """Seconds as sbatch's `--time` (D-HH:MM:SS, rounded up to whole minutes; 0 = UNLIMITED)."""
    if seconds == 0:
        return "UNLIMITED"
    minutes = max(1, -(-int(seconds) // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


def sbatch_options(res: Resources) -> list[str]:
    """The resource options as `--opt=value` (values already validated as safe)."""
    gres = None
    if res.gpus:
        gres = f"gpu:{res.gpu_type}:{res.gpus}" if res.gpu_type else f"gpu:{res.gpus}"
    options: list[str] = []
    for option, value in (
        ("--partition", res.queue),
        ("--account", res.account),
        ("--qos", res.qos),
        ("--time", None if res.time_limit is None else format_time(res.time_limit)),
        ("--nodes", res.nodes),
        ("--ntasks", res.tasks),
        ("--cpus-per-task", res.cpus_per_task),
        ("--mem", f"{res.memory_mb}M" if res.memory_mb else None),
        ("--gres", gres),
    ):
        if value is not None:
            options.append(f"{option}={value}")
    options.extend(parse_sbatch_args(list(res.extra_args), "extra_args"))
    return options
