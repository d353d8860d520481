"""The job spec: what the offloaded container asked for, as the HPC job will run it.

The webhook builds it from the pod and its annotations, the connector reads it from a
downward-API file; both validate through this one module so a value the webhook admits is a
value the connector can run. Dataclasses, not pydantic: the connector's memory budget is tight.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from connector.errors import SpecError

SPEC_VERSION = 2  # 1 named SLURM options (`slurm`); still read
# The webhook renames the offloaded container's env entries NAME -> ENV_PREFIX + NAME (and
# prefixes its envFrom), so no pod variable (LD_PRELOAD, PATH, HPC_OFFLOAD_*) can act on the
# connector's own process before it starts; the connector strips the prefix for the job.
ENV_PREFIX = "HPCO_ENV_"
MAX_COUNT = 10**9  # any count or seconds beyond this is a typo, not a request
RUNTIMES = ("singularity", "apptainer", "charliecloud", "podman", "enroot", "none")
LOG_MODES = ("stream", "job-only", "end", "none")  # job-only: stream, and the connector is quiet
DEFAULT_RUNTIME = "singularity"
DEFAULT_POLL_INTERVAL = 30.0
MIN_POLL_INTERVAL = 1.0

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
# a time limit as batch systems write it: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, or UNLIMITED
_TIME = re.compile(
    r"(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}(?::\d{1,2}(?::\d{1,2})?)?|UNLIMITED)"
)
_MEMORY = re.compile(r"(\d+)([KMGT]?)")
_NAME_VALUE = re.compile(r"[A-Za-z0-9_.,:=@+/-]+")
_SAFE_VALUE = re.compile(r"[^\s'\"\\]+")
_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9-]*")
_UID = re.compile(r"[A-Za-z0-9-]{1,64}")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Whole pods (`hpc.offload/container: "*"`, docs/whole-pods.md): every container is a part of
# one HPC job; volumes the kubelet fills (ConfigMap, Secret, downwardAPI, projected) reach the
# leader connector at VOLUMES_DIR/<name> and are copied into the job directory.
WHOLE_POD = "*"
PART_KINDS = ("init", "sidecar", "app")  # sidecar: an init container with restartPolicy Always
VOLUME_KINDS = ("emptyDir", "files")
VOLUMES_DIR = "/var/run/hpc-offload/volumes"

def parse_duration(value: str | float | int, what: str = "poll-interval") -> float:
    """Seconds from `30s`, `5m`, `1h`, `500ms` or a bare number of seconds (the paper's form)."""
    if isinstance(value, bool):
        raise SpecError(f"{what}: {value!r} is not a duration; use e.g. 30s, 5m or 10")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if not match:
            raise SpecError(
                f"{what}: {value!r} is not a duration; use e.g. 30s, 5m, 1h or seconds (10)"
            )
        number, unit = float(match.group(1)), match.group(2) or "s"
        seconds = number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if seconds < MIN_POLL_INTERVAL:
        raise SpecError(f"{what}: {value!r} is below the minimum of {MIN_POLL_INTERVAL:g}s")
    return seconds


def parse_time_limit(value: str | int, what: str = "time") -> int:
    """Seconds in a time limit (minutes `30`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM:SS`, or
    `UNLIMITED` = 0), the notation of `hpc.offload/time` and of sbatch/qsub users."""
    text = str(value).strip()
    if not _TIME.fullmatch(text):
        raise SpecError(
            f"{what}: {value!r} is not a time limit; use minutes (30), MM:SS, HH:MM:SS, "
            "D-HH, D-HH:MM:SS or UNLIMITED"
        )
    if text == "UNLIMITED":
        return 0
    days = 0
    if "-" in text:
        day_part, text = text.split("-", 1)
        days = int(day_part)
        parts = [int(p) for p in text.split(":")] + [0, 0]
        hours, minutes, secs = parts[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            hours, minutes, secs = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, secs = 0, parts[0], parts[1]
        else:
            hours, minutes, secs = parts
    seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if seconds > MAX_COUNT:
        raise SpecError(f"{what}: {value!r} is longer than any scheduler accepts")
    return seconds


def check_time_limit(value: str, what: str = "time") -> str:
    """A time limit's text, checked (as `parse_time_limit` reads it)."""
    parse_time_limit(value, what)
    return str(value).strip()


def parse_memory_mb(value: str, what: str = "mem") -> int:
    """A memory size (`2048` MiB, `512M`, `4G`) as MiB, rounded up."""
    match = _MEMORY.fullmatch(str(value).strip().upper())
    if not match:
        raise SpecError(f"{what}: {value!r} is not a memory size; use e.g. 512M or 4G")
    number, unit = int(match.group(1)), match.group(2)
    kib = number * {"K": 1, "": 1024, "M": 1024, "G": 1024**2, "T": 1024**3}[unit]
    return max(1, -(-kib // 1024))


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
    if not text or not _NAME_VALUE.fullmatch(text):
        raise SpecError(
            f"{what}: {value!r} is not a valid name; use letters, digits and _ . , : = @ + / -"
        )
    return text


def parse_extra_args(value: str | Sequence[str], what: str = "extra_args") -> list[str]:
    """Extra scheduler flags, checked for shape only (`--opt` or `--opt=value`, no spaces,
    quotes or backslashes); each backend checks them against its own allow-list."""
    items = value.split() if isinstance(value, str) else list(value)
    result: list[str] = []
    for item in items:
        text = str(item)
        option, eq, arg = text.partition("=")
        if not _OPTION.fullmatch(option) or (eq and not arg):
            raise SpecError(f"{what}: {text!r} is not an option of the form --name or --name=VALUE")
        if arg and not _SAFE_VALUE.fullmatch(arg):
            raise SpecError(f"{what}: the value of {option} may not contain spaces, quotes or backslashes")
        result.append(text)
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
class Resources:
    """What the job asks of the scheduler, in no manager's words: each backend maps these to
    its own directives (SLURM `--partition`, Grid Engine `-q`, …) and checks `extra_args`
    against its own allow-list."""

    queue: str | None = None  # SLURM partition, Grid Engine queue
    account: str | None = None  # SLURM account, Grid Engine project
    qos: str | None = None
    time_limit: int | None = None  # seconds; 0 = explicitly unlimited
    nodes: int | None = None
    tasks: int | None = None
    cpus_per_task: int | None = None
    memory_mb: int | None = None  # per node
    gpus: int | None = None  # per node
    gpu_type: str | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mount:
    """One volumeMount of a whole pod's container: `sub_path` inside the volume, at `path`."""

    volume: str
    path: str
    sub_path: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class Part:
    """One container of a whole pod, as its part of the pod's one HPC job."""

    name: str
    kind: str = "app"
    image: str | None = None
    hpc_image: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env_passthrough: tuple[str, ...] = ()
    env_from: bool = False
    working_dir: str | None = None
    mounts: tuple[Mount, ...] = ()


@dataclass(frozen=True)
class PodVolume:
    """A volume a whole pod's containers mount: an `emptyDir` (a directory the job makes) or
    `files` the kubelet filled (ConfigMap, Secret, downwardAPI, projected), copied by the leader."""

    name: str
    kind: str = "emptyDir"


def check_part_name(name: Any, what: str = "part") -> str:
    """A container name (a DNS label): it names files in the job directory."""
    if not isinstance(name, str) or not _DNS_LABEL.fullmatch(name):
        raise SpecError(f"{what}: {name!r} is not a container name (lower-case letters, digits, '-')")
    return name


def _check_pod_layout(parts: Sequence[Part], volumes: Sequence[PodVolume]) -> None:
    """Names unique, kinds known, every mount on a listed volume, paths a shell and a bind
    flag can carry."""
    seen_volumes: set[str] = set()
    for volume in volumes:
        check_part_name(volume.name, "volumes")
        if volume.name in seen_volumes:
            raise SpecError(f"volumes: {volume.name!r} is listed twice")
        if volume.kind not in VOLUME_KINDS:
            raise SpecError(f"volumes: {volume.name!r} has kind {volume.kind!r}, not one of "
                            f"{', '.join(VOLUME_KINDS)}")
        seen_volumes.add(volume.name)
    names: set[str] = set()
    for part in parts:
        check_part_name(part.name, "parts")
        if part.name in names:
            raise SpecError(f"parts: {part.name!r} is listed twice")
        names.add(part.name)
        if part.kind not in PART_KINDS:
            raise SpecError(f"parts: {part.name!r} has kind {part.kind!r}, not one of {', '.join(PART_KINDS)}")
        for key in ("image", "hpc_image", "working_dir"):
            value = getattr(part, key)
            if value is not None and (not isinstance(value, str) or _CONTROL.search(value)):
                raise SpecError(f"parts: {part.name!r}: {key} must be one line of text")
        for mount in part.mounts:
            where = f"parts: {part.name!r} mount {mount.path!r}"
            if mount.volume not in seen_volumes:
                raise SpecError(f"{where}: volume {mount.volume!r} is not in volumes")
            check_mount_path(mount.path, where)
            if mount.sub_path is not None:
                check_sub_path(mount.sub_path, where)
    if not any(part.kind == "app" for part in parts):
        raise SpecError("parts: a whole pod needs at least one app container")


def check_mount_path(path: Any, what: str) -> str:
    """An absolute path without `..`, line breaks, or the `:`/`,` that bind flags split on."""
    if not isinstance(path, str) or not path.startswith("/") or _CONTROL.search(path) \
            or ".." in path.split("/") or any(c in path for c in ":,"):
        raise SpecError(f"{what}: the mount path must be absolute, without '..', ':' or ','")
    return path


def check_sub_path(path: Any, what: str) -> str:
    """A relative path inside a volume (Kubernetes' subPath rules, and no `:`/`,`)."""
    if not isinstance(path, str) or not path or path.startswith("/") or _CONTROL.search(path) \
            or ".." in path.split("/") or any(c in path for c in ":,"):
        raise SpecError(f"{what}: subPath {path!r} must be relative, without '..', ':' or ','")
    return path


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
    resources: Resources = field(default_factory=Resources)
    logs: str = "stream"
    poll_interval: float | None = None
    stage_in: tuple[StagePair, ...] = ()
    stage_out: tuple[StagePair, ...] = ()
    script: str | None = None
    pod: PodRef = field(default_factory=PodRef)
    container: str | None = None
    env_prefix: str | None = None  # the webhook renamed the container's env NAME to PREFIX+NAME
    parts: tuple[Part, ...] = ()  # a whole pod (container "*"): every container, in pod order
    volumes: tuple[PodVolume, ...] = ()  # the volumes the parts mount
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
            if not _ENV_NAME.fullmatch(name):
                raise SpecError(f"env: {name!r} is not a valid environment variable name")
        for name, value in self.env.items():
            if not isinstance(value, str) or "\x00" in value:
                raise SpecError(f"env: the value of {name} must be text without NUL bytes")
        for part in (*self.command, *self.args):
            if not isinstance(part, str) or "\x00" in part:
                raise SpecError("command/args: every item must be text without NUL bytes")
        if self.poll_interval is not None and self.poll_interval < MIN_POLL_INTERVAL:
            raise SpecError(f"poll_interval: {self.poll_interval} is below {MIN_POLL_INTERVAL:g}s")
        if self.env_prefix is not None and not _ENV_NAME.fullmatch(self.env_prefix):
            raise SpecError(f"env_prefix: {self.env_prefix!r} is not a variable name prefix")
        if self.pod.uid and not _UID.fullmatch(self.pod.uid):
            raise SpecError(f"pod.uid: {self.pod.uid!r} is not a Kubernetes UID")
        res = self.resources
        for name in ("queue", "account", "qos", "gpu_type"):
            value = getattr(res, name)
            if value is not None and check_name(value, name) != value:
                raise SpecError(f"{name}: {value!r} is not a valid name (surrounding spaces)")
        for name in ("nodes", "tasks", "cpus_per_task", "memory_mb", "gpus"):
            value = getattr(res, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 < value <= MAX_COUNT):
                raise SpecError(f"{name}: {value!r} must be a whole number from 1 to {MAX_COUNT}")
        if res.time_limit is not None and (isinstance(res.time_limit, bool)
                                           or not isinstance(res.time_limit, int)
                                           or not 0 <= res.time_limit <= MAX_COUNT):
            raise SpecError(f"time_limit: {res.time_limit!r} must be seconds from 0 (unlimited) "
                            f"to {MAX_COUNT}")
        parse_extra_args(list(res.extra_args))
        if self.parts or self.container == WHOLE_POD:
            self._validate_whole_pod()

    def _validate_whole_pod(self) -> None:
        if self.container != WHOLE_POD or not self.parts:
            raise SpecError(f"parts: a whole pod has container {WHOLE_POD!r} and its parts")
        if self.script is not None:
            raise SpecError("script: a whole pod's script is rendered; a verbatim script runs one container")
        if self.stage_in or self.stage_out:
            raise SpecError("stage-in/stage-out: not available for a whole pod (its volumes go with it)")
        if (self.resources.tasks or 1) > 1 or (self.resources.nodes or 1) > 1:
            raise SpecError("tasks/nodes: a whole pod runs on one node, as a pod does")
        _check_pod_layout(self.parts, self.volumes)

    # --- whole pods -------------------------------------------------------------------------

    @property
    def whole_pod(self) -> bool:
        return bool(self.parts)

    @property
    def leader(self) -> str:
        """The part whose connector submits the job: the first init container (the kubelet
        starts it first; app containers wait for every init container), else the first app."""
        inits = [p for p in self.parts if p.kind != "app"]
        return (inits or [p for p in self.parts if p.kind == "app"])[0].name

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise SpecError(f"--part: {name!r} is not a container of this pod "
                        f"({', '.join(p.name for p in self.parts) or 'not a whole pod'})")

    def part_env_prefix(self, name: str) -> str | None:
        """The prefix of this part's env in the leader's container (PREFIX + index + `_`)."""
        index = [p.name for p in self.parts].index(self.part(name).name)
        return f"{self.env_prefix}{index}_" if self.env_prefix else None

    def part_spec(self, name: str) -> JobSpec:
        """One part as a single container's spec (its image, command, env), sharing the pod's
        runtime, resources and identity: what the renderer and the policy check read."""
        part = self.part(name)
        return replace(self, image=part.image, hpc_image=part.hpc_image or self.hpc_image,
                       command=part.command, args=part.args, env_passthrough=part.env_passthrough,
                       env_from=part.env_from, working_dir=part.working_dir, container=part.name,
                       env_prefix=self.part_env_prefix(name), parts=(), volumes=())

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
        values: dict[str, Any] = dict(data)
        if values.get("version", 1) == 1 and "slurm" in values:  # pods admitted before an upgrade
            values["resources"] = values.pop("slurm")
            values["version"] = SPEC_VERSION
            values["resources"] = _resources_from_v1(values["resources"])
        _reject_unknown(values, cls, "unknown job spec field(s)")
        try:
            for key in ("command", "args", "env_passthrough"):
                if key in values:
                    values[key] = tuple(_string_list(values[key], key))
            if "env" in values:
                env = values["env"]
                if not isinstance(env, Mapping):
                    raise SpecError("env: must be an object of NAME: value")
                values["env"] = {str(k): v for k, v in env.items()}  # type: ignore[assignment]
            if "resources" in values and not isinstance(values["resources"], Resources):
                values["resources"] = _resources_from_dict(values["resources"])
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
            if "parts" in values:
                values["parts"] = tuple(_part_from_dict(item) for item in _list(values["parts"], "parts"))
            if "volumes" in values:
                values["volumes"] = tuple(_volume_from_dict(item) for item in _list(values["volumes"], "volumes"))
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
        if self.parts:
            for part in self.parts:
                try:
                    self.part_spec(part.name).check_runnable()
                except SpecError as exc:
                    raise SpecError(f"container {part.name!r}: {exc.message}") from None
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
        """The job's name (or tag): carries the pod UID so a restarted connector finds its job."""
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


def _list(value: Any, what: str) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise SpecError(f"{what}: must be a list")
    return list(value)


def _part_from_dict(value: Any) -> Part:
    if not isinstance(value, Mapping):
        raise SpecError("parts: each part must be an object")
    _reject_unknown(value, Part, "parts: unknown field(s)")
    data: dict[str, Any] = dict(value)
    for key in ("command", "args", "env_passthrough"):
        if key in data:
            data[key] = tuple(_string_list(data[key], f"parts.{key}"))
    mounts = []
    for item in _list(data.get("mounts", ()), "parts.mounts"):
        if not isinstance(item, Mapping):
            raise SpecError("parts.mounts: each mount must be an object")
        _reject_unknown(item, Mount, "parts.mounts: unknown field(s)")
        mounts.append(Mount(**item))
    data["mounts"] = tuple(mounts)
    for name in data.get("env_passthrough", ()):
        if not _ENV_NAME.fullmatch(name):
            raise SpecError(f"parts.env_passthrough: {name!r} is not a valid environment variable name")
    for item in (*data.get("command", ()), *data.get("args", ())):
        if "\x00" in item:
            raise SpecError("parts: command/args items must be text without NUL bytes")
    return Part(**data)


def _volume_from_dict(value: Any) -> PodVolume:
    if not isinstance(value, Mapping):
        raise SpecError("volumes: each volume must be an object")
    _reject_unknown(value, PodVolume, "volumes: unknown field(s)")
    return PodVolume(**value)


def _string_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise SpecError(f"{what}: must be a list of strings")
    return [str(item) for item in value]


def _reject_unknown(data: Mapping[str, Any], model: type, message: str) -> None:
    """A misspelt key is an error, not silently ignored."""
    unknown = sorted(set(data) - {f.name for f in fields(model)})
    if unknown:
        raise SpecError(f"{message}: {', '.join(map(str, unknown))}")


def _resources_from_dict(value: Any) -> Resources:
    if not isinstance(value, Mapping):
        raise SpecError("resources: must be an object")
    _reject_unknown(value, Resources, "resources: unknown option(s)")
    options: dict[str, Any] = dict(value)
    if "extra_args" in options:
        options["extra_args"] = tuple(parse_extra_args(_string_list(options["extra_args"], "extra_args")))
    return Resources(**options)


def _resources_from_v1(value: Any) -> Resources:
    """Spec version 1 named SLURM's options (`slurm`: partition, time "H:M:S", mem "512M",
    gres "gpu:a100:2"); read them into the neutral form."""
    if not isinstance(value, Mapping):
        raise SpecError("slurm: must be an object")
    old = dict(value)
    gres = str(old.get("gres") or "")
    kind, count = None, None
    if gres:
        parts = gres.split(":")
        count = check_positive_int(parts[-1], "gres") if len(parts) > 1 else 1
        kind = parts[1] if len(parts) == 3 else None
    time = old.get("time")
    memory = old.get("mem")
    return _resources_from_dict({
        "queue": old.get("partition"), "account": old.get("account"), "qos": old.get("qos"),
        "time_limit": None if time is None else parse_time_limit(str(time)),
        "nodes": old.get("nodes"), "tasks": old.get("ntasks"),
        "cpus_per_task": old.get("cpus_per_task"),
        "memory_mb": parse_memory_mb(str(memory)) if memory else None,
        "gpus": count, "gpu_type": kind, "extra_args": old.get("extra_args") or (),
    })
