"""Cluster policy: which namespaces may offload what, with limits and defaults.

One YAML file, mounted from a ConfigMap, selects namespaces by name glob. Admission never
reads the API server (a namespace-label lookup would add latency and a failure mode to every
admission: see docs/policy.md). A violation is a 403 naming the rule; no file means no policy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from pathlib import Path
from typing import Any, NoReturn

import yaml

from connector.backends.slurm_options import format_time
from connector.errors import SpecError
from connector.render import hpc_image
from connector.spec import (
    RUNTIMES,
    JobSpec,
    check_name,
    check_positive_int,
    check_time_limit,
    parse_time_limit,
)
from webhook import qsub
from webhook.annotations import PREFIX, AdmissionDenied, quote
from webhook.sbatch import (
    Component,
    Directive,
    ScriptError,
    argument_components,
    measure,
    script_components,
    time_limit,
)

log = logging.getLogger(__name__)


class PolicyError(ValueError):
    """The policy file is invalid (reported by the loader, never to a pod's owner)."""


@dataclass(frozen=True)
class Defaults:
    """Values applied when the pod does not say."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    runtime: str | None = None


@dataclass(frozen=True)
class Rule:
    """One policy rule; the first rule whose namespace globs match applies."""

    name: str
    namespaces: tuple[str, ...] = ("*",)
    profiles: tuple[str, ...] | None = None  # globs; None: any
    runtimes: tuple[str, ...] | None = None
    images: tuple[str, ...] | None = None  # prefixes; None: any
    max_time: str | None = None
    max_gpus: int | None = None
    max_nodes: int | None = None
    allow_scripts: bool = True
    defaults: Defaults = field(default_factory=Defaults)
    partitions: tuple[str, ...] | None = None  # globs; None: any
    accounts: tuple[str, ...] | None = None
    qos: tuple[str, ...] | None = None
    managers: tuple[str, ...] = ("slurm",)  # whose directives a verbatim script is read for

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ns", _globs(self.namespaces))
        object.__setattr__(self, "_profiles", _globs(self.profiles) if self.profiles else None)
        object.__setattr__(self, "_pins", {
            option: (_globs(values), values) for option, values in (
                ("partition", self.partitions), ("account", self.accounts), ("qos", self.qos))
            if values is not None})
        seconds = (parse_time_limit(self.max_time) or None) if self.max_time else None
        object.__setattr__(self, "_max_seconds", seconds)

    def matches(self, namespace: str) -> bool:
        return bool(self._ns.match(namespace))  # type: ignore[attr-defined]

    def default_runtime(self) -> str | None:
        """With `runtimes` set the runtime is pinned, so a profile cannot pick another."""
        if self.defaults.runtime:
            return self.defaults.runtime
        return self.runtimes[0] if self.runtimes else None

    def default_time(self) -> str | None:
        """With `maxTime` set the time is pinned, so a partition default cannot exceed it."""
        return self.defaults.time or self.max_time

    def pins_image(self) -> bool:
        return self.images is not None

    def default_name(self, option: str) -> str | None:
        """`partition`, `account` or `qos` for a pod that names none: the default, else with
        an allow-list the first entry (unless it is a glob), so a profile cannot pick another."""
        value: str | None = getattr(self.defaults, option)
        if value is None and option in self._pins:  # type: ignore[attr-defined]
            first = self._pins[option][1][0]  # type: ignore[attr-defined]
            value = None if any(c in first for c in "*?[") else first
        return value

    def limits_nodes(self) -> bool:
        """Node counts matter: they bound nodes, and GPUs per node multiply by them."""
        return self.max_nodes is not None or self.max_gpus is not None

    def constrains_scripts(self) -> bool:
        """Whether a verbatim script's directives must be read to hold this rule."""
        return bool(self._pins) or self.max_time is not None or self.limits_nodes()  # type: ignore[attr-defined]

    def check(self, spec: JobSpec, backend: str) -> None:
        """Raise AdmissionDenied(403) naming this rule for the first violation."""
        profiles = self._profiles  # type: ignore[attr-defined]
        if profiles is not None and not profiles.match(backend):
            self._deny(f"{PREFIX}backend {quote(backend)} is not an allowed profile; "
                       f"allowed: {', '.join(self.profiles or ())}")
        if spec.script is not None:
            if not self.allow_scripts:
                self._deny(f"{PREFIX}script is not allowed (allowScripts: false); "
                           "remove it so the webhook renders the script")
            if self.constrains_scripts():
                self._check_script(spec.script)
            return  # the script's own directives are the job's request, not the annotations
        if self.runtimes is not None and spec.runtime not in self.runtimes:
            self._deny(f"{PREFIX}runtime {quote(spec.runtime)} is not allowed; "
                       f"allowed: {', '.join(self.runtimes)}")
        if self.images is not None and spec.effective_runtime() != "none":
            image = hpc_image(spec)
            bare = image.removeprefix("docker://")
            if not any(image.startswith(p) or bare.startswith(p) for p in self.images):
                self._deny(f"image {quote(image)} is not allowed; images must start with "
                           f"one of: {', '.join(self.images)}")
        if self.images is not None and spec.hpc_image is None \
                and spec.effective_runtime() != "none":
            self._deny("the job spec names no hpc_image, so the profile's image would run; "
                       "under this rule the webhook pins the image")
        max_seconds = self._max_seconds  # type: ignore[attr-defined]
        limit = spec.resources.time_limit
        if self.max_time is not None and limit is None:
            self._deny(f"the job spec sets no time limit; the maximum is {self.max_time}")
        if self.limits_nodes() and spec.resources.nodes is None:
            self._deny("the job spec sets no node count; under this rule the webhook pins it")
        if self.max_time is not None and limit is not None and (
                limit == 0 or (max_seconds is not None and limit > max_seconds)):
            shown = "UNLIMITED" if limit == 0 else format_time(limit)
            self._deny(f"{PREFIX}time {quote(shown)} exceeds the maximum {self.max_time}")
        if self.max_nodes is not None and (spec.resources.nodes or 1) > self.max_nodes:
            self._deny(f"{PREFIX}nodes {spec.resources.nodes} exceeds the maximum {self.max_nodes}")
        res = spec.resources
        for option, value in (("partition", res.queue), ("account", res.account),
                              ("qos", res.qos)):
            self._check_name(option, value, f"{PREFIX}{option}")
        if self.limits_nodes():
            self._check_counts([rendered_component(spec)], "the job", default_nodes=1)

    def _check_name(self, option: str, value: str | None, where: str) -> None:
        """An allow-listed partition/account/qos: every comma-separated name must match."""
        pin = self._pins.get(option)  # type: ignore[attr-defined]
        if pin is None:
            return
        globs, allowed = pin
        if value is None:
            self._deny(f"{where} sets no --{option}; under this rule it must be one of: "
                       f"{', '.join(allowed)}")
        for name in str(value).split(","):
            if not globs.fullmatch(name):
                self._deny(f"{where}: {option} {name!r} is not allowed; allowed: "
                           f"{', '.join(allowed)}")

    def _check_script(self, script: str) -> None:
        """A verbatim script, read as sbatch reads it: every component within the limits,
        the sums of nodes and GPUs too."""
        if "gridengine" in self.managers:
            self._check_qsub_script(script)
        if "slurm" not in self.managers:
            return
        try:
            components = script_components(script)
        except ScriptError as exc:
            self._deny(f"{exc.message}; under this rule every #SBATCH line must be one the "
                       "policy check can read")
        for component in components:
            where = f"{PREFIX}script"
            if self.max_time is not None:
                directive = component.last("time")
                if directive is None:
                    self._deny(f"{where} sets no --time; under this rule add "
                               f"#SBATCH --time=… (at most {self.max_time})")
                self._check_time(directive)
            for option in self._pins:  # type: ignore[attr-defined]
                directive = component.last(option)
                if directive is None:
                    self._check_name(option, None, where)
                else:
                    self._check_name(option, directive.value, directive.source)
        if self.limits_nodes():
            self._check_counts(components, f"{PREFIX}script", default_nodes=None)

    def _check_qsub_script(self, script: str) -> None:
        """The same limits for Grid Engine's `#$` lines (maxNodes aside: Grid Engine counts
        slots, not nodes)."""
        where = f"{PREFIX}script"
        try:
            request = qsub.script_request(script)
            if self.max_time is not None:
                if not request.hard_times:
                    self._deny(f"{where} sets no hard run time; under this rule add "
                               f"#$ -l h_rt=H:MM:SS (at most {self.max_time})")
                for directive in request.hard_times:
                    limit = qsub.seconds(directive)
                    if limit == 0 or limit > self._max_seconds:  # type: ignore[attr-defined]
                        self._deny(f"{directive.source}: h_rt={directive.value} exceeds the "
                                   f"maximum {self.max_time}")
            for option, found, flag in (("partition", request.queues, "-q"),
                                        ("account", request.projects, "-P")):
                if option not in self._pins:  # type: ignore[attr-defined]
                    continue
                if not found:
                    self._deny(f"{where} sets no {flag} (Grid Engine's {option}); under this "
                               f"rule it must be one of: {', '.join(self._pins[option][1])}")  # type: ignore[attr-defined]
                for directive in found:
                    names = ",".join(part.split("@", 1)[0]
                                     for part in (directive.value or "").split(","))
                    self._check_name(option, names, directive.source)
            if self.max_gpus is not None:
                gpus, sources = qsub.gpu_total(request)
                if gpus > self.max_gpus:
                    self._deny(f"{where} asks for {gpus} GPUs{_sources(sources)}; the maximum "
                               f"is {self.max_gpus}")
        except ScriptError as exc:
            self._deny(f"{exc.message}; under this rule every #$ line must be one the policy "
                       "check can read")

    def _check_time(self, directive: Directive) -> None:
        try:
            seconds = time_limit(directive)
        except ScriptError as exc:
            self._deny(exc.message)
        max_seconds = self._max_seconds  # type: ignore[attr-defined]
        if seconds == 0 or (max_seconds is not None and seconds > max_seconds):
            self._deny(f"{directive.source}: {directive.describe()} exceeds the maximum "
                       f"{self.max_time}")

    def _check_counts(self, components: list[Component], what: str,
                      default_nodes: int | None) -> None:
        """Nodes and GPUs of all components against the limits. `default_nodes`: what a job
        without --nodes gets (1 for a rendered job, where the webhook pins it; None for a
        script, where SLURM decides)."""
        try:
            measures = [measure(c, default_nodes=default_nodes) for c in components]
        except ScriptError as exc:
            self._deny(exc.message)
        nodes = sum(m.nodes for m in measures)
        gpus = sum(m.gpus for m in measures)
        if self.max_nodes is not None and nodes > self.max_nodes:
            sources = _sources(s for m in measures for s in m.node_sources)
            self._deny(f"{what} asks for {nodes} nodes{sources}; the maximum is {self.max_nodes}")
        if self.max_gpus is not None and gpus > self.max_gpus:
            sources = _sources(s for m in measures for s in m.gpu_sources)
            self._deny(f"{what} asks for {gpus} GPUs{sources}; the maximum is {self.max_gpus}")

    def _deny(self, message: str) -> NoReturn:
        raise AdmissionDenied(f"policy rule {quote(self.name)}: {message}", 403)


def rendered_component(spec: JobSpec) -> Component:
    """The options the connector renders for a job, labelled with where each came from."""
    res = spec.resources
    directives = []
    for name, value, where in (
        ("nodes", res.nodes, f"{PREFIX}nodes"),
        ("ntasks", res.tasks, f"{PREFIX}ntasks"),
        ("gres", f"gpu:{res.gpus}" if res.gpus else None, f"{PREFIX}gpus (or GPU limits)"),
    ):
        if value is not None:
            directives.append(Directive(name, str(value), where))
    extra = argument_components(res.extra_args, f"{PREFIX}sbatch-args")
    return Component(directives + extra.directives)


def _sources(directives: Iterable[Directive]) -> str:
    """` (from …)`: the options a count came from, each once."""
    seen: dict[str, None] = {}
    for directive in directives:
        seen.setdefault(f"{directive.describe()} in {directive.source}"
                        if not directive.source.endswith(directive.describe() + "'")
                        else directive.source, None)
    return f" (from {'; '.join(seen)})" if seen else ""


@dataclass(frozen=True)
class Policy:
    """The whole file: ordered rules and what happens to a namespace no rule matches."""

    rules: tuple[Rule, ...] = ()
    unmatched: str = "deny"

    def rule_for(self, namespace: str) -> Rule | None:
        """The first matching rule; None when unmatched namespaces are allowed freely."""
        for rule in self.rules:
            if rule.matches(namespace):
                return rule
        if self.unmatched == "allow":
            return None
        names = ", ".join(rule.name for rule in self.rules) or "none"
        raise AdmissionDenied(
            f"policy: no rule admits namespace {quote(namespace)} (rules: {names}; "
            "unmatched: deny); ask a cluster administrator to add one",
            403,
        )

    @classmethod
    def from_yaml(cls, text: str | bytes) -> Policy:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"not valid YAML: {exc}") from None
        return cls.from_mapping(data or {})

    @classmethod
    def from_mapping(cls, data: Any) -> Policy:
        if not isinstance(data, Mapping):
            raise PolicyError("the policy must be a mapping with 'rules'")
        data = _keys(data, {"rules", "unmatched", "api_version", "kind"}, "policy")
        unmatched = str(data.get("unmatched", "deny"))
        if unmatched not in ("deny", "allow"):
            raise PolicyError(f"unmatched: {unmatched!r} must be deny or allow")
        raw_rules = data.get("rules")
        raw_rules = [] if raw_rules is None else raw_rules
        if not isinstance(raw_rules, list):
            raise PolicyError("rules: must be a list")
        rules = tuple(_rule(item, index) for index, item in enumerate(raw_rules))
        names = [rule.name for rule in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PolicyError(f"rules: duplicate rule name(s): {', '.join(duplicates)}")
        return cls(rules=rules, unmatched=unmatched)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        try:
            return cls.from_yaml(Path(path).read_bytes())
        except OSError as exc:
            raise PolicyError(f"cannot read {path}: {exc}") from None


_RULE_KEYS = {"name", "namespaces", "profiles", "runtimes", "images", "max_time", "max_gpus",
              "max_nodes", "allow_scripts", "defaults", "partitions", "accounts", "qos",
              "managers"}
MANAGERS = ("slurm", "gridengine")


def _rule(item: Any, index: int) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(item, Mapping):
        raise PolicyError(f"{where}: must be a mapping")
    data = _keys(item, _RULE_KEYS, where)
    name = str(data.get("name") or f"rule-{index}")
    where = f"rule {name!r}"
    try:
        runtimes = _strings(data.get("runtimes"), f"{where}: runtimes")
        for runtime in runtimes or ():
            if runtime not in RUNTIMES:
                raise PolicyError(f"{where}: runtime {runtime!r} is not one of "
                                  f"{', '.join(RUNTIMES)}")
        defaults = _defaults(data.get("defaults"), where)
        if runtimes and defaults.runtime and defaults.runtime not in runtimes:
            raise PolicyError(f"{where}: defaults.runtime {defaults.runtime!r} is not in runtimes")
        max_time = _time_text(data.get("max_time"), f"{where}: maxTime")
        pins = {key: _strings(data.get(key), f"{where}: {key}")
                for key in ("partitions", "accounts", "qos")}
        for key, option in (("partitions", "partition"), ("accounts", "account"),
                            ("qos", "qos")):
            default = getattr(defaults, option)
            if pins[key] and default and not _globs(pins[key]).fullmatch(default):
                raise PolicyError(f"{where}: defaults.{option} {default!r} is not in {key}")
        managers = _strings(data.get("managers"), f"{where}: managers") or ("slurm",)
        for manager in managers:
            if manager not in MANAGERS:
                raise PolicyError(f"{where}: managers: {manager!r} is not one of "
                                  f"{', '.join(MANAGERS)}")
        return Rule(
            name=name,
            managers=managers,
            namespaces=_strings(data.get("namespaces"), f"{where}: namespaces") or ("*",),
            profiles=_strings(data.get("profiles"), f"{where}: profiles"),
            runtimes=runtimes,
            images=_strings(data.get("images"), f"{where}: images"),
            max_time=check_time_limit(max_time, f"{where}: maxTime") if max_time else None,
            max_gpus=_limit(data.get("max_gpus"), f"{where}: maxGpus"),
            max_nodes=_limit(data.get("max_nodes"), f"{where}: maxNodes"),
            allow_scripts=_bool(data.get("allow_scripts", True), f"{where}: allowScripts"),
            defaults=defaults,
            **pins,
        )
    except SpecError as exc:
        raise PolicyError(exc.message) from None


def _defaults(value: Any, where: str) -> Defaults:
    if value is None:
        return Defaults()
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: defaults must be a mapping")
    data = _keys(value, {"partition", "account", "qos", "time", "runtime"}, f"{where}: defaults")
    out: dict[str, str] = {}
    for key in ("partition", "account", "qos"):
        if data.get(key) is not None:
            out[key] = check_name(data[key], f"{where}: defaults.{key}")
    if data.get("time") is not None:
        text = _time_text(data["time"], f"{where}: defaults.time")
        out["time"] = check_time_limit(str(text), f"{where}: defaults.time")
    if data.get("runtime") is not None:
        runtime = str(data["runtime"]).lower()
        if runtime not in RUNTIMES:
            raise PolicyError(f"{where}: defaults.runtime {runtime!r} is not one of "
                              f"{', '.join(RUNTIMES)}")
        out["runtime"] = runtime
    return Defaults(**out)


def _keys(data: Mapping[Any, Any], known: set[str], where: str) -> dict[str, Any]:
    """Keys in snake_case (camelCase, as in Kubernetes YAML, is accepted); unknown ones fail."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", str(key)).lower()
        if name not in known:
            raise PolicyError(f"{where}: unknown key {key!r}")
        out[name] = value
    return out


def _time_text(value: Any, where: str) -> str | None:
    """Times must be quoted: YAML 1.1 reads an unquoted 2:00:00 as the number 7200."""
    if value is None or isinstance(value, str):
        return value
    raise PolicyError(f"{where}: {value!r} must be a quoted SLURM time, e.g. \"2:00:00\" "
                      "(unquoted H:MM:SS values are read by YAML as numbers)")


def _strings(value: Any, where: str) -> tuple[str, ...] | None:
    """A list of names or globs. An empty list is refused: read as "none" it would lock a rule
    shut, and code reading it as "unset" opened it to everything (issue 12, item 9)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and not value:
        raise PolicyError(f"{where}: an empty list is not allowed; omit the key to allow any, "
                          "or list what is allowed")
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: must be a list of non-empty strings")
    return tuple(value)


def _limit(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise PolicyError(f"{where}: {value!r} is not a whole number")
    if value == 0 or value == "0":
        return 0
    return check_positive_int(value, where)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{where}: {value!r} must be true or false")
    return value


def _globs(patterns: tuple[str, ...] | None) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns or ()))


class PolicyStore:
    """The current policy, reloaded when its file changes; cheap on the hot path.

    `get()` costs a clock read except at most once per `interval` seconds, when it stats the
    file (a ConfigMap update swaps a symlink, changing mtime and inode) and re-reads it only
    if the stat changed, re-parsing only if the bytes changed. A broken new file is logged and
    the last good policy stays in force, so an admin's typo never opens or closes the cluster.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path) if path else None
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._policy: Policy | None = None
        self._stat: tuple[int, int, int] | None = None
        self._digest: bytes | None = None
        self._checked = clock()
        self.last_error: str | None = None
        if self.path is not None:
            self._policy = self._load(strict=True)

    @classmethod
    def of(cls, policy: Policy | None) -> PolicyStore:
        """A store holding a fixed policy (tests, `hpc-offload render --policy`)."""
        store = cls(None)
        store._policy = policy
        return store

    def get(self) -> Policy | None:
        due = self.path is not None and self._clock() - self._checked >= self.interval
        if due and self._lock.acquire(blocking=False):  # one thread reloads, the others go on
            try:
                self._checked = self._clock()
                policy = self._load(strict=False)
                if policy is not None:
                    self._policy = policy
            finally:
                self._lock.release()
        return self._policy

    def _load(self, strict: bool) -> Policy | None:
        """The new policy, or None when unchanged or broken (then logged, not raised)."""
        assert self.path is not None
        try:
            st = os.stat(self.path)
            stat = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stat == self._stat:
                return None
            data = Path(self.path).read_bytes()
            digest = hashlib.sha256(data).digest()
            if digest == self._digest:
                self._stat = stat
                return None
            policy = Policy.from_yaml(data)
        except (OSError, PolicyError) as exc:
            message = f"policy file {self.path}: {exc}"
            if strict:
                raise PolicyError(message) from None
            if message != self.last_error:
                log.error("%s; keeping the last good policy", message)
            self.last_error = message
            return None
        self._stat, self._digest, self.last_error = stat, digest, None
        log.info("policy loaded from %s (%d rules)", self.path, len(policy.rules))
        return policy
