"""The job spec: what the offloaded container asked for, as the HPC job will run it.

The webhook builds it from the pod and its annotations, the connector reads it from a
downward-API file; both validate through this one module so a value the webhook admits is a
value the connector can run. Dataclasses, not pydantic: the connector's memory budget is tight.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from connector.errors import SpecError

SPEC_VERSION = 1
RUNTIMES = ("singularity", "apptainer", "charliecloud", "podman", "enroot", "none")
LOG_MODES = ("stream", "end", "none")
DEFAULT_RUNTIME = "singularity"
DEFAULT_POLL_INTERVAL = 30.0
MIN_POLL_INTERVAL = 1.0

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
# SLURM --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, or UNLIMITED
_SLURM_TIME = re.compile(
    r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}(?::\d{1,2}(?::\d{1,2})?)?|UNLIMITED)$"
)
_MEMORY = re.compile(r"^(\d+)([KMGT]?)$")
_NAME_VALUE = re.compile(r"^[A-Za-z0-9_.,:=@+/-]+$")
_SBATCH_VALUE = re.compile(r"^[^\s'\"\\]+$")
_UID = re.compile(r"^[A-Za-z0-9-]{1,64}$")

# sbatch options a user may add through `hpc.offload/sbatch-args`. Anything that would change
# where output goes, who runs the job or what is run (--output, --wrap, --uid, --export…)
# is the connector's to set and is refused.
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


def parse_duration(value: str | float | int, what: str = "poll-interval") -> float:
    """Seconds from `30s`, `5m`, `1h`, `500ms` or a bare number of seconds (the paper's form)."""
    if isinstance(value, bool):
        raise SpecError(f"{what}: {value!r} is not a duration; use e.g. 30s, 5m or 10")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise SpecError(
                f"{what}: {value!r} is not a duration; use e.g. 30s, 5m, 1h or seconds (10)"
            )
        number, unit = float(match.group(1)), match.group(2) or "s"
        seconds = number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if seconds < MIN_POLL_INTERVAL:
        raise SpecError(f"{what}: {value!r} is below the minimum of {MIN_POLL_INTERVAL:g}s")
    return seconds


def check_slurm_time(value: str, what: str = "time") -> str:
    """A SLURM --time value, as sbatch accepts it."""
    value = str(value).strip()
    if not _SLURM_TIME.match(value):
        raise SpecError(
            f"{what}: {value!r} is not a SLURM time; use minutes (30), MM:SS, HH:MM:SS, "
            "D-HH, D-HH:MM:SS or UNLIMITED"
        )
    return value


def seconds_to_slurm_time(seconds: int) -> str:
    """`activeDeadlineSeconds` as a SLURM time limit, rounded up to whole minutes."""
    minutes = max(1, -(-int(seconds) // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


def slurm_time_to_seconds(value: str) -> int | None:
    """Seconds in a SLURM time value; None for UNLIMITED."""
    value = check_slurm_time(value)
    if value == "UNLIMITED":
        return None
    days = 0
    if "-" in value:
        day_part, value = value.split("-", 1)
        days = int(day_part)
        parts = [int(p) for p in value.split(":")]
        parts += [0] * (3 - len(parts))
        hours, minutes, secs = parts
    else:
        parts = [int(p) for p in value.split(":")]
        if len(parts) == 1:
            hours, minutes, secs = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, secs = 0, parts[0], parts[1]
        else:
            hours, minutes, secs = parts
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def check_memory(value: str, what: str = "mem") -> str:
    """A SLURM memory size (`2048`, `512M`, `4G`)."""
    value = str(value).strip().upper()
    if not _MEMORY.match(value):
        raise SpecError(f"{what}: {value!r} is not a SLURM memory size; use e.g. 512M or 4G")
    return value


def check_positive_int(value: Any, what: str) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise SpecError(f"{what}: {value!r} is not a whole number") from None
    if number < 1:
        raise SpecError(f"{what}: {value!r} must be 1 or more")
    return number


def check_name(value: Any, what: str) -> str:
    """A partition, account or QOS name: letters, digits and `_.,:=@+/-` only."""
    text = str(value).strip()
    if not text or not _NAME_VALUE.match(text):
        raise SpecError(
            f"{what}: {value!r} is not a valid name; use letters, digits and _ . , : = @ + / -"
        )
    return text


def parse_sbatch_args(value: str | Sequence[str], what: str = "sbatch-args") -> list[str]:
    """Extra `--opt=value` flags, each checked against SBATCH_ALLOWED."""
    items = value.split() if isinstance(value, str) else list(value)
    result: list[str] = []
    for item in items:
        option, eq, arg = str(item).partition("=")
        if option not in SBATCH_ALLOWED:
            allowed = ", ".join(sorted(SBATCH_ALLOWED))
            raise SpecError(f"{what}: {option!r} is not allowed; allowed options: {allowed}")
        if SBATCH_ALLOWED[option] and not (eq and arg):
            raise SpecError(f"{what}: {option} needs a value, as {option}=VALUE")
        if not SBATCH_ALLOWED[option] and eq:
            raise SpecError(f"{what}: {option} takes no value")
        if arg and not _SBATCH_VALUE.match(arg):
            raise SpecError(
                f"{what}: the value of {option} may not contain spaces, quotes or backslashes"
            )
        result.append(str(item))
    return result


def parse_staging(value: str | Sequence[Mapping[str, str]], what: str) -> list[StagePair]:
    """`src:dst,src:dst` (annotation form) or a list of {"src", "dst"} objects."""
    pairs: list[StagePair] = []
    if isinstance(value, str):
        raw = [part.strip() for part in value.split(",") if part.strip()]
        for text in raw:
            src, sep, dst = text.partition(":")
            if not sep or not src or not dst:
                raise SpecError(f"{what}: {text!r} is not SRC:DST (e.g. /data/in.csv:input/in.csv)")
            pairs.append(StagePair(src=src, dst=dst))
    else:
        for entry in value:
            item: Any = entry
            if not isinstance(item, Mapping) or not item.get("src") or not item.get("dst"):
                raise SpecError(f"{what}: {item!r} must have 'src' and 'dst'")
            pairs.append(StagePair(src=str(item["src"]), dst=str(item["dst"])))
    for pair in pairs:
        for path in (pair.src, pair.dst):
            if "\n" in path or "\x00" in path or ".." in path.split("/"):
                raise SpecError(f"{what}: {path!r} may not contain '..' or line breaks")
    return pairs


@dataclass(frozen=True)
class StagePair:
    """One `podPath:hpcPath` pair; the direction comes from the list it is in."""

    src: str  # the path in the pod
    dst: str  # the path on the HPC side (relative: inside the job directory)


@dataclass(frozen=True)
class PodRef:
    """The pod this job mirrors; its UID names the job so a restart can find it again."""

    namespace: str = "default"
    name: str = ""
    uid: str = ""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    nodes: int | None = None
    ntasks: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    gres: str | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobSpec:
    """Everything the connector needs to run and mirror one HPC job."""

    image: str | None = None  # the container's image, as Kubernetes names it
    hpc_image: str | None = None  # `hpc.offload/image`: the image as the HPC side names it
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    env_passthrough: tuple[str, ...] = ()
    env_from: bool = False
    working_dir: str | None = None
    runtime: str | None = None  # None: the profile's runtime, else DEFAULT_RUNTIME
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    logs: str = "stream"
    poll_interval: float | None = None
    stage_in: tuple[StagePair, ...] = ()
    stage_out: tuple[StagePair, ...] = ()
    script: str | None = None
    pod: PodRef = field(default_factory=PodRef)
    container: str | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if self.version != SPEC_VERSION:
            raise SpecError(f"version: {self.version!r} is not supported (expected {SPEC_VERSION})")
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise SpecError(f"runtime: {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        if self.logs not in LOG_MODES:
            raise SpecError(f"logs: {self.logs!r} is not one of {', '.join(LOG_MODES)}")
        if self.script is not None and not self.script.strip():
            raise SpecError("script: is empty")
        for name in list(self.env) + list(self.env_passthrough):
            if not _ENV_NAME.match(name):
                raise SpecError(f"env: {name!r} is not a valid environment variable name")
        for name, value in self.env.items():
            if not isinstance(value, str) or "\x00" in value:
                raise SpecError(f"env: the value of {name} must be text without NUL bytes")
        for part in (*self.command, *self.args):
            if not isinstance(part, str) or "\x00" in part:
                raise SpecError("command/args: every item must be text without NUL bytes")
        if self.poll_interval is not None and self.poll_interval < MIN_POLL_INTERVAL:
            raise SpecError(f"poll_interval: {self.poll_interval} is below {MIN_POLL_INTERVAL:g}s")
        if self.pod.uid and not _UID.match(self.pod.uid):
            raise SpecError(f"pod.uid: {self.pod.uid!r} is not a Kubernetes UID")
        if self.slurm.time is not None:
            check_slurm_time(self.slurm.time)
        if self.slurm.mem is not None:
            check_memory(self.slurm.mem)
        for name in ("partition", "account", "qos", "gres"):
            value = getattr(self.slurm, name)
            if value is not None:
                check_name(value, name)
        parse_sbatch_args(list(self.slurm.extra_args))

    # --- (de)serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data without empty fields, so annotations stay short."""
        plain = _plain(self)
        assert isinstance(plain, dict)
        return plain

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        if not isinstance(data, Mapping):
            raise SpecError("the job spec must be a JSON object")
        _reject_unknown(data, cls, "unknown job spec field(s)")
        values: dict[str, Any] = dict(data)
        try:
            for key in ("command", "args", "env_passthrough"):
                if key in values:
                    values[key] = tuple(_string_list(values[key], key))
            if "env" in values:
                env = values["env"]
                if not isinstance(env, Mapping):
                    raise SpecError("env: must be an object of NAME: value")
                values["env"] = {str(k): v for k, v in env.items()}  # type: ignore[assignment]
            if "slurm" in values:
                values["slurm"] = _slurm_from_dict(values["slurm"])
            if "pod" in values:
                pod = values["pod"]
                if not isinstance(pod, Mapping):
                    raise SpecError("pod: must be an object with namespace, name and uid")
                values["pod"] = PodRef(**{k: str(v) for k, v in pod.items() if k in
                                          ("namespace", "name", "uid")})
            for key in ("stage_in", "stage_out"):
                if key in values:
                    values[key] = tuple(parse_staging(values[key], key.replace("_", "-")))
            if values.get("poll_interval") is not None:
                values["poll_interval"] = parse_duration(values["poll_interval"])
            if "runtime" in values:
                values["runtime"] = str(values["runtime"]).lower()
            return cls(**values)
        except TypeError as exc:
            raise SpecError(f"malformed job spec: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"the job spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def effective_runtime(self) -> str:
        return self.runtime or DEFAULT_RUNTIME

    def check_runnable(self) -> None:
        """Checks that need the runtime the profile chose, so they run after merging it."""
        runtime = self.effective_runtime()
        if self.script is not None:
            return
        if runtime != "none" and not (self.hpc_image or self.image):
            raise SpecError("image: required unless runtime is 'none' or a script is given")
        if not self.command and runtime in ("charliecloud", "none"):
            raise SpecError(
                f"command: required with runtime {runtime!r} "
                "(it has no image entrypoint to fall back on)"
            )

    @property
    def job_name(self) -> str:
        """The SLURM job name: carries the pod UID so a restarted connector finds its job."""
        return f"hpco-{self.pod.uid}" if self.pod.uid else "hpco-job"


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


_EMPTY: tuple[Any, ...] = (None, (), [], {}, False)  # dropped from the JSON form
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """Dataclasses to JSON-able dicts without empty fields, in one pass and without asdict's
    deep copies (the webhook does this per admission; scalars, the most values, go first)."""
    cls = type(value)
    if cls in _SCALARS:
        return value
    if isinstance(value, list | tuple):
        return [item if type(item) in _SCALARS else _plain(item) for item in value]
    names = _FIELD_NAMES.get(cls)
    if names is None and hasattr(cls, "__dataclass_fields__"):
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(value))
    if names is not None:
        items = [(name, _plain(getattr(value, name))) for name in names]
    elif isinstance(value, Mapping):
        items = [(key, _plain(item)) for key, item in value.items()]
    else:
        return value
    return {key: item for key, item in items if item not in _EMPTY}


def _string_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise SpecError(f"{what}: must be a list of strings")
    return [str(item) for item in value]


def _reject_unknown(data: Mapping[str, Any], model: type, message: str) -> None:
    """A misspelt key is an error, not silently ignored."""
    unknown = sorted(set(data) - {f.name for f in fields(model)})
    if unknown:
        raise SpecError(f"{message}: {', '.join(map(str, unknown))}")


def _slurm_from_dict(value: Any) -> SlurmOptions:
    if not isinstance(value, Mapping):
        raise SpecError("slurm: must be an object")
    _reject_unknown(value, SlurmOptions, "slurm: unknown option(s)")
    options: dict[str, Any] = dict(value)
    for key in ("nodes", "ntasks", "cpus_per_task"):
        if options.get(key) is not None:
            options[key] = check_positive_int(options[key], key)
    if "extra_args" in options:
        options["extra_args"] = tuple(parse_sbatch_args(_string_list(options["extra_args"],
                                                                     "extra_args")))
    return SlurmOptions(**options)
