"""The pure mutation: an annotated pod becomes a pod whose container is the connector.

No I/O, no typed client models: the raw pod dict is deep-copied and edited, so every field
this code does not know about (native-sidecar `restartPolicy`, new API fields) survives
untouched (berglas#264). The exact output is docs/mutation-contract.md.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Mapping
from dataclasses import replace
from fractions import Fraction
from typing import Any

import orjson

from connector.errors import SpecError
from connector.render import hpc_image
from connector.spec import ENV_PREFIX, MAX_COUNT, WHOLE_POD, JobSpec, Resources, parse_time_limit
from webhook.annotations import (
    INJECTED,
    JOB_SPEC,
    PREFIX,
    STATUS,
    AdmissionDenied,
    Annotations,
    check_annotations_size,
    parse_annotations,
    quote,
)
from webhook.config import WebhookConfig
from webhook.policy import Policy, Rule

__all__ = ["AdmissionDenied", "mutate", "read_job_spec", "copy_json", "parse_quantity"]

BASE = "/var/run/hpc-offload"
PODINFO, PROFILE, STATE = "hpc-offload-podinfo", "hpc-offload-profile", "hpc-offload-state"
NO_TOKEN = "hpc-offload-no-token"  # noqa: S105 - a volume name, not a secret
RELAY_TOKEN = "hpc-offload-relay-token"  # noqa: S105 - a volume name, not a secret
RESERVED_VOLUMES = (PODINFO, PROFILE, STATE, NO_TOKEN, RELAY_TOKEN)
RELAY_DIR = f"{BASE}/relay"  # the projected token the relay checks (connector.backends.relay)
RELAY_AUDIENCE = "hpc-offload-relay"
PODINFO_DIR, PROFILE_DIR, STATE_DIR = f"{BASE}/podinfo", f"{BASE}/profile", f"{BASE}/state"
# The default ServiceAccount token's path: the connector never talks to the API server, so an
# empty directory is mounted there in its container (the ServiceAccount admission plugin then
# leaves it alone; other containers keep their token).
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105 - a path
CONNECTOR_ARGS = (
    "-m", "connector.cli", "run", "--spec", f"{PODINFO_DIR}/job-spec.json",
    "--profile", PROFILE_DIR, "--state-dir", STATE_DIR,
)
PRE_STOP = ("/bin/sh", "-c", "kill -INT 1")
DEFAULT_GRACE_SECONDS = 30
# Container fields that would act on the connector instead of the job, or hold it open.
_REMOVED = ("args", "workingDir", "livenessProbe", "readinessProbe", "startupProbe",
            "stdin", "stdinOnce", "tty")

_SPACE = re.compile(r"\s")
_QUANTITY = re.compile(  # used with fullmatch
    r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:[eE]([+-]?\d{1,2})|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?"
)
_SUFFIX: dict[str, Fraction] = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20),
    "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}
MIB = 2**20


def copy_json(value: Any) -> Any:
    """A deep copy of JSON-shaped data: a round trip through orjson (C) is twice as fast as a
    Python walk. YAML's extra types come back as JSON has them (dates as strings, keys as
    strings), as `kubectl` sends them; only integers beyond 64 bits take the Python walk."""
    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError:
        return _copy_walk(value)


def _copy_walk(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_walk(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_walk(v) for v in value]
    return value


def mutate(
    pod: Mapping[str, Any], namespace: str, config: WebhookConfig, policy: Policy | None
) -> dict[str, Any]:
    """The pod as the webhook admits it, rewritten when annotated; `pod` is never changed.

    Unannotated and already-injected pods come back as a deep copy, so mutate(mutate(p)) ==
    mutate(p). A rewritten pod is a new object that shares what it does not rewrite with
    `pod` (copying the whole pod and diffing the copy were a fifth of an admission): copy_json
    it before changing it in place. Raises AdmissionDenied (400 bad value, 403 policy).
    """
    if not isinstance(pod, dict):
        raise AdmissionDenied("the object is not a pod (expected a JSON object)")
    metadata = pod.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise AdmissionDenied("metadata: must be an object")
    annotations = (metadata or {}).get("annotations")
    parsed = parse_annotations(annotations)
    if parsed.injected:
        # Reinvocation, a re-applied mutated pod — or a hand-written one: held to the policy
        # and to being our own output, then admitted unchanged.
        from webhook.injected import verify_injected

        verify_injected(pod, parsed, namespace, config, policy)
        return copy_json(pod)
    if not parsed.offloaded:
        return copy_json(pod)
    assert parsed.backend is not None and isinstance(metadata, dict)
    assert isinstance(annotations, dict)
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise AdmissionDenied("spec: the pod has no spec")
    if parsed.container == WHOLE_POD:  # every container, one HPC job (docs/whole-pods.md)
        from webhook.whole_pod import mutate_whole_pod

        return mutate_whole_pod(pod, namespace, config, policy, parsed)
    container = _select_container(spec, parsed.container)
    rule = policy.rule_for(namespace) if policy is not None else None
    job = build_job_spec(container, spec, parsed, rule, config.gpu_resource_names)
    if rule is not None:
        rule.check(job, parsed.backend)
    _check_reserved(spec, container)
    check_staging(container, job)

    # Copy on write: each dict and list on the way to a change, nothing else.
    annotations = {**annotations, JOB_SPEC: job_spec_json(job), STATUS: INJECTED}
    check_annotations_size(annotations)
    spec = _mutate_pod_spec(spec, parsed.backend, config)
    spec["containers"] = [_make_connector(c, config) if c is container else c
                          for c in spec["containers"]]
    return {**pod, "metadata": {**metadata, "annotations": annotations}, "spec": spec}


def connector_command(config: WebhookConfig) -> list[str]:
    """The image's own interpreter by absolute path, in isolated mode (-I: no PYTHON*
    variables, no user site, no current directory on sys.path): the pod's env is data the
    connector forwards, so neither a pod PATH nor a pod PYTHONPATH may act on it."""
    ready = ["--ready-port", str(config.ready_port)] if config.ready_port else []
    return [config.connector_python, "-I", *CONNECTOR_ARGS, *ready]


def job_spec_json(job: JobSpec) -> str:
    """The annotation value: no `pod` (unknown at admission) and no literal env values."""
    data = job.to_dict()
    data.pop("pod", None)
    data.pop("env", None)
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()


def read_job_spec(pod: Mapping[str, Any]) -> JobSpec | None:
    """The job spec a mutated pod carries (what the connector will read), else None."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(JOB_SPEC)
    return JobSpec.from_json(text) if text else None


# --- the job spec ---------------------------------------------------------------------------

def build_job_spec(
    container: dict[str, Any],
    pod_spec: Mapping[str, Any],
    ann: Annotations,
    rule: Rule | None,
    gpu_names: tuple[str, ...],
) -> JobSpec:
    """The container and annotations as a JobSpec; the policy's defaults fill the gaps."""
    name = container["name"]
    resources = container.get("resources") or {}
    if not isinstance(resources, dict):
        raise AdmissionDenied(f"container {quote(name)}: resources must be an object")
    requests = _resource_map(resources, "requests", name)
    limits = _resource_map(resources, "limits", name)

    cpu = requests.get("cpu", limits.get("cpu"))
    memory = requests.get("memory", limits.get("memory"))
    label = f"container {quote(name)}"
    cpus = _bounded(_ceil(parse_quantity(cpu, f"{label}: cpu")), cpu, f"{label}: cpu",
                    "cores") if cpu is not None else None
    mem = None
    if memory is not None:
        mib = _bounded(_ceil(parse_quantity(memory, f"{label}: memory"), MIB), memory,
                       f"{label}: memory", "MiB")
        mem = mib if mib > 0 else None
    # the annotation wins; "" (gpus: 0) means none
    gpu_type, gpus = None, None
    if ann.gpus is None:
        gpus = _gpus_from_limits(requests, limits, name, gpu_names)
    elif ann.gpus:
        parts = ann.gpus.split(":")  # gpu:N or gpu:TYPE:N
        gpus, gpu_type = int(parts[-1]), (parts[1] if len(parts) == 3 else None)

    time = ann.time
    if time is None:
        deadline = pod_spec.get("activeDeadlineSeconds")
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, int) or deadline < 1:
                raise AdmissionDenied(
                    f"spec.activeDeadlineSeconds: {deadline!r} must be a whole number of "
                    "seconds, 1 or more")
            time = str(-(-deadline // 60))  # whole minutes, rounded up
    if time is None and rule is not None:
        time = rule.default_time()
    runtime = ann.runtime or (rule.default_runtime() if rule is not None else None)

    env_names: dict[str, None] = {}
    for item in listed(container.get("env"), f"container {quote(name)}: env"):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise AdmissionDenied(f"container {quote(name)}: env entries need a name")
        env_names[item["name"]] = None
    working_dir = container.get("workingDir")
    try:
        resources = Resources(
            queue=ann.partition or (rule.default_name("partition") if rule else None),
            account=ann.account or (rule.default_name("account") if rule else None),
            qos=ann.qos or (rule.default_name("qos") if rule else None),
            time_limit=parse_time_limit(time) if time is not None else None,
            # under node or GPU limits a job naming no nodes gets one, as counted
            nodes=ann.nodes or (1 if rule is not None and rule.limits_nodes() else None),
            tasks=ann.ntasks,
            cpus_per_task=cpus if cpus and cpus > 0 else None,
            memory_mb=mem,
            gpus=gpus or None,
            gpu_type=gpu_type,
            extra_args=ann.sbatch_args,
        )
        job = JobSpec(
            image=_image(container.get("image"), name),
            hpc_image=ann.image,
            command=_strings(container.get("command"), name, "command"),
            args=_strings(container.get("args"), name, "args"),
            env_passthrough=tuple(env_names),
            env_from=bool(container.get("envFrom")),
            working_dir=working_dir if isinstance(working_dir, str) and working_dir else None,
            runtime=runtime,
            resources=resources,
            logs=ann.logs or "stream",
            poll_interval=ann.poll_interval,
            stage_in=ann.stage_in,
            stage_out=ann.stage_out,
            script=ann.script,
            container=name,
            env_prefix=ENV_PREFIX,
        )
        job.check_runnable()
        if (rule is not None and rule.pins_image() and job.hpc_image is None
                and job.script is None and job.effective_runtime() != "none"):
            # The profile may name an image too; pinning keeps the policy's prefix check true.
            job = replace(job, hpc_image=hpc_image(job))
    except SpecError as exc:
        raise AdmissionDenied(f"container {quote(name)}: {exc.message}") from None
    return job


def parse_quantity(value: Any, what: str) -> Fraction:
    """A Kubernetes quantity (`500m`, `1.5`, `1Gi`, `500M`, `1e3`) as an exact number."""
    text = str(value).strip() if isinstance(value, str | int | float) and \
        not isinstance(value, bool) else ""
    amount = _quantity(text) if len(text) <= 64 else None
    if amount is None:
        raise AdmissionDenied(f"{what}: {quote(value)} is not a Kubernetes quantity "
                              "(e.g. 500m, 2, 512Mi, 1G)")
    if amount < 0:
        raise AdmissionDenied(f"{what}: {quote(value)} may not be negative")
    return amount


@functools.lru_cache(maxsize=1024)  # the same few quantities recur in every pod
def _quantity(text: str) -> Fraction | None:
    match = _QUANTITY.fullmatch(text)
    if not match:
        return None
    number, exponent, suffix = match.groups()
    return Fraction(number) * (Fraction(10) ** int(exponent) if exponent else _SUFFIX[suffix or ""])


def _bounded(count: int, value: Any, what: str, unit: str) -> int:
    """A count a scheduler can take: no job asks for more than MAX_COUNT of anything."""
    if count > MAX_COUNT:
        raise AdmissionDenied(f"{what}: {quote(value)} is {count} {unit}; at most {MAX_COUNT} "
                              f"{unit} can be asked for")
    return count


def _ceil(amount: Fraction, unit: int = 1) -> int:
    """ceil(amount / unit) in integers: Fraction's own arithmetic costs µs per admission."""
    return -(-amount.numerator // (amount.denominator * unit))


def _resource_map(resources: Mapping[str, Any], kind: str, name: str) -> dict[str, Any]:
    values = resources.get(kind) or {}
    if not isinstance(values, dict):
        raise AdmissionDenied(f"container {quote(name)}: resources.{kind} must be an object")
    return values


def _gpus_from_limits(requests: Mapping[str, Any], limits: Mapping[str, Any], name: str,
                      gpu_names: tuple[str, ...]) -> int | None:
    """GPUs from the GPU resources' limits (extended resources: requests equal limits)."""
    total = 0
    for resource in gpu_names:
        value = limits.get(resource, requests.get(resource))
        if value is None:
            continue
        count = parse_quantity(value, f"container {quote(name)}: {resource}")
        if count.denominator != 1:
            raise AdmissionDenied(f"container {quote(name)}: {resource}: {quote(value)} must be "
                                  "a whole number of devices")
        total += int(count)
    return _bounded(total, total, f"container {quote(name)}: GPU limits", "GPUs") or None


def _image(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.startswith("-") or _SPACE.search(value):
        raise AdmissionDenied(f"container {quote(name)}: image {quote(value)} is not an image "
                              "name (no spaces, not starting with '-')")
    return value


def _strings(value: Any, name: str, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdmissionDenied(f"container {quote(name)}: {what} must be a list of strings")
    return tuple(value)


# --- the pod --------------------------------------------------------------------------------

def _select_container(spec: dict[str, Any], wanted: str | None) -> dict[str, Any]:
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise AdmissionDenied("spec.containers: the pod has no containers to offload")
    for container in containers:
        if not isinstance(container, dict) or not isinstance(container.get("name"), str):
            raise AdmissionDenied("spec.containers: every container needs a name")
    names = [c["name"] for c in containers]
    if wanted is not None:
        for container in containers:
            if container["name"] == wanted:
                return container
        inits = [c.get("name") for c in listed(spec.get("initContainers"), "spec.initContainers")
                 if isinstance(c, dict)]
        if wanted in inits:
            raise AdmissionDenied(
                f"{PREFIX}container: {quote(wanted)} is an init container; only regular "
                f"containers can be offloaded: {', '.join(names)}")
        raise AdmissionDenied(f"{PREFIX}container: {quote(wanted)} is not a container of this "
                              f"pod; use one of {', '.join(names)}")
    if len(containers) == 1:
        return containers[0]
    raise AdmissionDenied(f"{PREFIX}container: missing; the pod has {len(containers)} containers "
                          f"({', '.join(names)}): name the one to offload")


def normalise(path: Any) -> str:
    """A mount path as the kernel resolves it: `/var//run/./x/` and `//var/run/x` are
    `/var/run/x` (compared as strings they slipped past the reserved-path check)."""
    text = posixpath.normpath("/" + str(path))
    return "/" + text.lstrip("/")


def inside(path: str, base: str) -> bool:
    """Whether normalised `path` is `base` or below it."""
    return path == base or base == "/" or path.startswith(base + "/")


def _check_reserved(spec: Mapping[str, Any], container: Mapping[str, Any]) -> None:
    for volume in listed(spec.get("volumes"), "spec.volumes"):
        if isinstance(volume, dict) and volume.get("name") in RESERVED_VOLUMES:
            raise AdmissionDenied(f"spec.volumes: the name {quote(volume['name'])} is reserved "
                                  "for hpc-offload; rename the volume")
    for mount in _mounts(container):
        path = normalise(mount.get("mountPath", ""))
        if inside(path, BASE) or inside(BASE, path):
            raise AdmissionDenied(f"container {quote(container['name'])}: mountPath "
                                  f"{quote(mount.get('mountPath'))} overlaps {BASE}, which "
                                  "hpc-offload uses; mount it elsewhere")


def check_staging(container: Mapping[str, Any], job: JobSpec) -> None:
    """Staged pod paths must be on volumes: the connector's root filesystem is read-only and
    is not the original image's, so only mounted data is there to copy."""
    mounts = [(normalise(m.get("mountPath", "")), bool(m.get("readOnly")))
              for m in _mounts(container)]
    for key, pairs, writable in (("stage-in", job.stage_in, False),
                                 ("stage-out", job.stage_out, True)):
        for pair in pairs:
            src = normalise(pair.src)
            if inside(src, BASE) or inside(src, TOKEN_DIR):
                raise AdmissionDenied(f"{PREFIX}{key}: the pod path {quote(pair.src)} is "
                                      "hpc-offload's own; stage files from your volumes")
            on = [ro for path, ro in mounts if inside(src, path)]
            if not on:
                raise AdmissionDenied(
                    f"{PREFIX}{key}: the pod path {quote(pair.src)} is not inside a volumeMount "
                    f"of container {quote(container['name'])}; mount a volume there (the "
                    "connector's own filesystem is read-only)")
            if writable and all(on):
                raise AdmissionDenied(
                    f"{PREFIX}{key}: the pod path {quote(pair.src)} is on a readOnly "
                    f"volumeMount of container {quote(container['name'])}; results cannot be "
                    "copied there")


def _mounts(container: Mapping[str, Any]) -> list[dict[str, Any]]:
    mounts = listed(container.get("volumeMounts"),
                    f"container {quote(container['name'])}: volumeMounts")
    return [m for m in mounts if isinstance(m, dict)]


def listed(value: Any, what: str) -> list[Any]:
    """A list field of the pod: absent is empty; anything but a list is refused (the API
    server would refuse it too, but after us)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise AdmissionDenied(f"{what}: must be a list")
    return value


def _make_connector(original: dict[str, Any], config: WebhookConfig) -> dict[str, Any]:
    """The offloaded container rewritten (key order kept: a small, readable patch)."""
    container = {key: value for key, value in original.items() if key not in _REMOVED}
    container["image"] = config.connector_image
    container["imagePullPolicy"] = config.image_pull_policy
    container["command"] = connector_command(config)
    container["resources"] = {kind: dict(values)
                              for kind, values in config.connector_resources.items()}
    mounts = container.get("volumeMounts")
    kept = [m for m in (mounts if isinstance(mounts, list) else ())
            if not (isinstance(m, dict) and inside(normalise(m.get("mountPath", "")), TOKEN_DIR))]
    container["volumeMounts"] = [*kept, *added_mounts()]
    if "env" in container:
        container["env"] = prefixed_env(container["env"])
    if "envFrom" in container:
        container["envFrom"] = prefixed_env_from(container["envFrom"])
    if config.relay_url:
        container["volumeMounts"].append({"name": RELAY_TOKEN, "mountPath": RELAY_DIR, "readOnly": True})
        container["env"] = relay_env(container.get("env"), config)
    container["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": config.run_as_user,
        "runAsGroup": config.run_as_group,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if config.ready_port:  # Ready = the HPC job runs (connector/readiness.py)
        container["readinessProbe"] = {"tcpSocket": {"port": config.ready_port}, "periodSeconds": 5,
                                       "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 1}
    container["lifecycle"] = {"preStop": {"exec": {"command": list(PRE_STOP)}}}
    container["terminationMessagePath"] = "/dev/termination-log"
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return container


def _mutate_pod_spec(original: dict[str, Any], backend: str, config: WebhookConfig) -> dict[str, Any]:
    """The pod spec rewritten: a new dict; its new securityContext and volumes are new too."""
    spec = dict(original)
    grace = spec.get("terminationGracePeriodSeconds")
    if isinstance(grace, bool) or not isinstance(grace, int):
        grace = None
    spec["terminationGracePeriodSeconds"] = max(grace or DEFAULT_GRACE_SECONDS,
                                                config.min_grace_seconds)
    security = spec.get("securityContext")
    security = spec["securityContext"] = dict(security) if isinstance(security, dict) else {}
    if security.get("fsGroup") is None:
        security["fsGroup"] = config.fs_group
    volumes = spec.get("volumes")
    spec["volumes"] = [*(volumes if isinstance(volumes, list) else ()), *added_volumes(backend),
                       *relay_volumes(config)]
    return spec


def added_volumes(backend: str) -> list[dict[str, Any]]:
    """The volumes the mutation adds: the job spec and pod identity (downward API), the
    profile (ConfigMap and Secret of the backend's name), state, and the empty token dir."""
    return [
        {"name": PODINFO, "downwardAPI": {"items": [
            {"path": "job-spec.json",
             "fieldRef": {"fieldPath": f"metadata.annotations['{JOB_SPEC}']"}},
            {"path": "pod-uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "pod-name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "pod-namespace", "fieldRef": {"fieldPath": "metadata.namespace"}},
        ]}},
        {"name": PROFILE, "projected": {"defaultMode": 0o400, "sources": [
            {"configMap": {"name": backend}},
            {"secret": {"name": backend, "optional": True}},
        ]}},
        {"name": STATE, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": NO_TOKEN, "emptyDir": {}},
    ]


def added_mounts() -> list[dict[str, Any]]:
    """The connector container's mounts of the added volumes."""
    return [
        {"name": PODINFO, "mountPath": PODINFO_DIR, "readOnly": True},
        {"name": PROFILE, "mountPath": PROFILE_DIR, "readOnly": True},
        {"name": STATE, "mountPath": STATE_DIR},
        {"name": NO_TOKEN, "mountPath": TOKEN_DIR, "readOnly": True},
    ]


def relay_volumes(config: WebhookConfig) -> list[dict[str, Any]]:
    """With a relay installed: a ServiceAccount token for it alone (its audience, bound to this
    pod), which the relay checks with a TokenReview to learn the pod's namespace and UID."""
    if not config.relay_url:
        return []
    token = {"audience": RELAY_AUDIENCE, "expirationSeconds": config.relay_token_seconds, "path": "token"}
    return [{"name": RELAY_TOKEN, "projected": {"sources": [{"serviceAccountToken": token}]}}]


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def prefixed_env(env: Any, prefix: str = ENV_PREFIX) -> Any:
    """The container's env under ENV_PREFIX + NAME: data for the job that no program in the
    connector container reads as a setting (an `LD_PRELOAD` would act on the interpreter before
    any of our code runs). `$(NAME)` references to earlier entries follow the rename, so the
    kubelet still resolves them; `$$` stays an escape. (A whole pod's leader holds every
    container's env, each under its own `prefix`.)"""
    if not isinstance(env, list):
        return env
    seen: set[str] = set()
    out: list[Any] = []
    for item in env:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            out.append(item)
            continue
        renamed = {**item, "name": prefix + item["name"]}
        if isinstance(item.get("value"), str):
            renamed["value"] = _REFERENCE.sub(
                lambda m: f"$({prefix}{m.group(1)})" if m.group(1) in seen else m.group(0), item["value"])
        seen.add(item["name"])
        out.append(renamed)
    return out


def prefixed_env_from(env_from: Any, prefix: str = ENV_PREFIX) -> Any:
    """`envFrom` sources with ENV_PREFIX before their own prefix (see prefixed_env)."""
    if not isinstance(env_from, list):
        return env_from
    return [{**item, "prefix": prefix + str(item.get("prefix") or "")} if isinstance(item, dict) else item
            for item in env_from]


def relay_env(env: Any, config: WebhookConfig) -> list[Any]:
    """The container's env with the relay's URL and CA for the connector (none of the pod's
    own HPC_OFFLOAD_RELAY_* entries: only the webhook says where the relay is)."""
    kept = [item for item in (env if isinstance(env, list) else ())
            if not (isinstance(item, dict) and str(item.get("name", "")).startswith("HPC_OFFLOAD_RELAY"))]
    kept.append({"name": "HPC_OFFLOAD_RELAY_URL", "value": config.relay_url})
    if config.relay_ca:
        kept.append({"name": "HPC_OFFLOAD_RELAY_CA", "value": config.relay_ca})
    return kept
