"""Grid Engine's words for the neutral job options: `#$` directives, and the allow-list of extra
qsub options a user may add. Pure functions (no connection), so they are tested and rendered
without a cluster.

Extra arguments keep the neutral `--name=VALUE` shape; for Grid Engine the name is qsub's own
option (`--l=arch=lx-amd64` is `-l arch=lx-amd64`, `--m=ea` is `-m ea`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from connector.errors import SpecError
from connector.spec import Resources, check_name, parse_extra_args

# qsub options a user may add (option -> takes a value). What would change where output goes,
# who runs the job, what is run or how it is found (-o, -e, -j, -N, -S, -wd, -cwd, -v, -V, -b,
# -t, -sync, -@, -C) is the connector's to set; queue, project, PE and limits come from the
# neutral options.
QSUB_ALLOWED: dict[str, bool] = {
    "l": True,  # a resource request, e.g. arch=lx-amd64 or a site complex
    "m": True,  # mail events (b, e, a, s, n)
    "M": True,  # mail address
    "p": True,  # priority (-1023..1024)
    "a": True,  # start after [[CC]YY]MMDDhhmm[.SS]
    "dl": True,  # deadline
    "ar": True,  # advance reservation id
    "R": True,  # reservation y/n
    "r": True,  # rerun y/n
    "ckpt": True,  # checkpointing environment
    "binding": True,  # core binding
    "js": True,  # job share
    "hold_jid": True,  # wait for other jobs
    "notify": False,  # SIGUSR1/SIGUSR2 before suspend/kill
}
DEFAULT_MEMORY_RESOURCE = "h_vmem"
DEFAULT_GPU_RESOURCE = "gpu"
DEFAULT_SHELL = "/bin/bash"


@dataclass(frozen=True)
class SiteOptions:
    """What the profile says about the site's Grid Engine (configuration keys)."""

    pe: str | None = None  # a parallel environment for multi-slot jobs (`-pe PE N`)
    memory_resource: str | None = DEFAULT_MEMORY_RESOURCE  # None: memory is not requested
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    shell: str = DEFAULT_SHELL


def parse_qsub_args(value: str | Sequence[str], what: str = "extra_args") -> list[str]:
    """Extra `--opt=value` options, each checked against QSUB_ALLOWED."""
    result = parse_extra_args(value, what)
    for item in result:
        option, eq, _arg = item.partition("=")
        name = option[2:]
        if name not in QSUB_ALLOWED:
            allowed = ", ".join(f"--{n}" for n in sorted(QSUB_ALLOWED))
            raise SpecError(f"{what}: {option!r} is not an allowed Grid Engine option; allowed "
                            f"(qsub's own names after two dashes): {allowed}")
        if QSUB_ALLOWED[name] and not eq:
            raise SpecError(f"{what}: {option} needs a value, as {option}=VALUE")
        if not QSUB_ALLOWED[name] and eq:
            raise SpecError(f"{what}: {option} takes no value")
    return result


def format_h_rt(seconds: int) -> str:
    """Seconds as Grid Engine's time format H:MM:SS (hours may exceed 24)."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def slots_of(res: Resources) -> int:
    """Grid Engine counts slots: every task's CPUs together."""
    return (res.tasks or 1) * (res.cpus_per_task or 1)


def qsub_options(res: Resources, site: SiteOptions) -> tuple[list[list[str]], list[str]]:
    """(directives as qsub argv pieces, notes on what Grid Engine cannot give as asked)."""
    options: list[list[str]] = []
    notes: list[str] = []
    slots = slots_of(res)
    if res.queue:
        options.append(["-q", res.queue])
    if res.account:
        options.append(["-P", res.account])
    if res.qos:
        notes.append(f"qos {res.qos!r}: Grid Engine has no QOS; ignored")
    if res.time_limit:  # 0 = unlimited: no limit asked
        options.append(["-l", f"h_rt={format_h_rt(res.time_limit)}"])
    if res.nodes and res.nodes > 1:
        notes.append(f"nodes {res.nodes}: a Grid Engine job gets slots, not nodes; "
                     "asking for the slots only")
    if slots > 1:
        if site.pe:
            options.append(["-pe", site.pe, str(slots)])
        else:
            notes.append(f"{slots} CPUs asked, but the profile names no parallel environment "
                         "(`pe`): the job gets one slot")
    if res.memory_mb and site.memory_resource:
        per_slot = -(-res.memory_mb // (slots if site.pe else 1))  # Grid Engine counts per slot
        options.append(["-l", f"{site.memory_resource}={per_slot}M"])
    if res.gpus:
        options.append(["-l", f"{site.gpu_resource}={res.gpus}"])
        if res.gpu_type:
            notes.append(f"gpu type {res.gpu_type!r}: Grid Engine sites name GPU models in their "
                         "own complexes; add it with extra_args --l=NAME=VALUE")
    for item in parse_qsub_args(list(res.extra_args), "extra_args"):
        option, eq, value = item.partition("=")
        options.append([f"-{option[2:]}", value] if eq else [f"-{option[2:]}"])
    return options, notes


def site_options(configuration: dict[str, object], profile_name: str) -> SiteOptions:
    """The profile's `pe`, `memory_resource`, `gpu_resource` and `shell`, checked."""
    from connector.errors import ProfileError

    def name(key: str, default: str | None) -> str | None:
        value = configuration.get(key, default)
        if value in (None, ""):
            return None
        try:
            return check_name(value, key)
        except SpecError as exc:
            raise ProfileError(f"profile {profile_name!r}: {exc.message}") from None

    shell = str(configuration.get("shell", DEFAULT_SHELL))
    if not shell.startswith("/") or any(c.isspace() or c in "'\"\\$`;" for c in shell):
        raise ProfileError(f"profile {profile_name!r}: shell {shell!r} must be an absolute path "
                           "such as /bin/bash")
    return SiteOptions(pe=name("pe", None),
                       memory_resource=name("memory_resource", DEFAULT_MEMORY_RESOURCE),
                       gpu_resource=name("gpu_resource", DEFAULT_GPU_RESOURCE) or DEFAULT_GPU_RESOURCE,
                       shell=shell)
