"""Whole pods (`hpc.offload/container: "*"`, docs/whole-pods.md): every container of the pod,
init containers included, becomes a connector of the same name, each following its own part of
the pod's one HPC job, so `kubectl logs POD -c NAME` and each container's exit code stay the
container's own and the pod ends as Kubernetes would end it.

- The job spec carries every container as a part (kind init, sidecar or app; image, command,
  args, env names, working dir, volume mounts) and the volumes they mount.
- The leader (the first init container, else the first app container) holds every container's
  env, each under its own prefix (HPCO_ENV_<i>_), and the pod's ConfigMap, Secret, downwardAPI
  and projected volumes at a private path, which it copies to the HPC side.
- What cannot follow the pod to an HPC node is denied, naming the field: host paths, the host
  network, ports, stdin, persistent volume claims, restart policies other than Never.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from fractions import Fraction
from typing import Any

from connector.errors import SpecError
from connector.spec import ENV_PREFIX, VOLUMES_DIR, WHOLE_POD, JobSpec, Mount, Part, PodVolume, check_mount_path
from webhook import mutation as m
from webhook.annotations import (
    INJECTED,
    JOB_SPEC,
    PREFIX,
    STATUS,
    AdmissionDenied,
    Annotations,
    check_annotations_size,
    quote,
)
from webhook.config import WebhookConfig
from webhook.policy import Policy, Rule

FILE_VOLUMES = ("configMap", "secret", "downwardAPI", "projected")
_HOST_FIELDS = ("hostNetwork", "hostPID", "hostIPC")
STAGING_HINT = ("copy the data to the HPC side instead: offload one container with "
                f"{PREFIX}stage-in / {PREFIX}stage-out from the claim, or keep it on the HPC file system")


# --- what can be offloaded ------------------------------------------------------------------

def _containers(spec: Mapping[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """(container, kind, field path) in the order the kubelet starts them."""
    found: list[tuple[dict[str, Any], str, str]] = []
    for key in ("initContainers", "containers"):
        for index, container in enumerate(m.listed(spec.get(key), f"spec.{key}")):
            where = f"spec.{key}[{index}]"
            if not isinstance(container, dict) or not isinstance(container.get("name"), str):
                raise AdmissionDenied(f"{where}: every container needs a name")
            kind = "app" if key == "containers" else (
                "sidecar" if container.get("restartPolicy") == "Always" else "init")
            found.append((container, kind, where))
    if not any(kind == "app" for _, kind, _ in found):
        raise AdmissionDenied("spec.containers: the pod has no containers to offload")
    return found


def check_offloadable(spec: Mapping[str, Any], ann: Annotations) -> dict[str, str]:
    """Deny what cannot run in an HPC job, naming the field; the volumes by name → kind
    (`emptyDir` or `files`)."""
    for key, what in (("script", "a whole pod's script is rendered; a verbatim script runs one container"),
                      ("stage_in", "a whole pod takes its volumes along; staging is for one container"),
                      ("stage_out", "a whole pod takes its volumes along; staging is for one container")):
        if getattr(ann, key):
            raise AdmissionDenied(f"{PREFIX}{key.replace('_', '-')}: not with {PREFIX}container "
                                  f'"{WHOLE_POD}" ({what})')
    for key in ("nodes", "ntasks"):
        if (getattr(ann, key) or 1) > 1:
            raise AdmissionDenied(f"{PREFIX}{key}: a whole pod runs on one node, as a pod does; "
                                  "offload one container to run it as several tasks or nodes")
    for key in _HOST_FIELDS:
        if spec.get(key) is True:
            raise AdmissionDenied(f"spec.{key}: the containers run on an HPC node, whose host "
                                  "namespaces are not the cluster node's; remove it to offload the whole pod")
    policy = spec.get("restartPolicy", "Always")
    if policy != "Never":
        raise AdmissionDenied(
            f"spec.restartPolicy: {quote(policy)}; a whole pod runs once, as one HPC job: use Never "
            "(a Job's backoffLimit retries the whole pod as a new pod)")
    volumes: dict[str, str] = {}
    for index, volume in enumerate(m.listed(spec.get("volumes"), "spec.volumes")):
        if not isinstance(volume, dict) or not isinstance(volume.get("name"), str):
            raise AdmissionDenied(f"spec.volumes[{index}]: every volume needs a name")
        name = volume["name"]
        where = f"spec.volumes[{index}] ({quote(name)})"
        sources = [key for key in volume if key != "name"]
        if "hostPath" in sources:
            raise AdmissionDenied(f"{where}.hostPath: a cluster node's files do not reach the HPC node "
                                  "the pod runs on; remove the volume to offload the whole pod")
        if "persistentVolumeClaim" in sources or "ephemeral" in sources:
            raise AdmissionDenied(f"{where}: a persistent volume claim cannot be attached on the HPC "
                                  f"node the pod runs on; {STAGING_HINT}")
        if "emptyDir" in sources:
            volumes[name] = "emptyDir"
        elif any(key in sources for key in FILE_VOLUMES):
            volumes[name] = "files"
        else:
            raise AdmissionDenied(f"{where}: {', '.join(sources) or 'this'} volumes cannot follow the pod "
                                  "to the HPC side; a whole pod may use emptyDir, configMap, secret, "
                                  "downwardAPI and projected volumes")
    for container, _, where in _containers(spec):
        ports = m.listed(container.get("ports"), f"{where}.ports")
        if ports:
            port = ports[0].get("containerPort") if isinstance(ports[0], dict) else ports[0]
            raise AdmissionDenied(
                f"{where}.ports: containerPort {quote(port)}: the container runs on an HPC node that "
                "nothing in the cluster routes to (no Service, probe or port-forward reaches it); "
                "remove the ports to offload the whole pod")
        if container.get("stdin") is True:
            raise AdmissionDenied(f"{where}.stdin: an HPC batch job has no input stream to attach to; "
                                  "remove stdin to offload the whole pod")
        if container.get("volumeDevices"):
            raise AdmissionDenied(f"{where}.volumeDevices: block devices cannot follow the pod to the HPC side")
    return volumes


# --- the job spec ---------------------------------------------------------------------------

def _mounts(container: dict[str, Any], where: str, volumes: Mapping[str, str]) -> tuple[Mount, ...]:
    mounts = []
    for index, mount in enumerate(m.listed(container.get("volumeMounts"), f"{where}.volumeMounts")):
        if not isinstance(mount, dict):
            continue
        at = f"{where}.volumeMounts[{index}]"
        path = m.normalise(mount.get("mountPath", ""))
        if m.inside(path, m.TOKEN_DIR):
            continue  # the ServiceAccount token: for the cluster's API, which the HPC side cannot reach
        if m.inside(path, m.BASE) or m.inside(m.BASE, path):
            raise AdmissionDenied(f"{at}.mountPath: {quote(mount.get('mountPath'))} overlaps {m.BASE}, "
                                  "which hpc-offload uses; mount it elsewhere")
        if mount.get("subPathExpr"):
            raise AdmissionDenied(f"{at}.subPathExpr: not available for a whole pod; use subPath")
        volume = mount.get("name")
        if not isinstance(volume, str) or volume not in volumes:
            raise AdmissionDenied(f"{at}.name: {quote(volume)} is not a volume of the pod")
        try:
            check_mount_path(path, f"{at}.mountPath")
            mounts.append(Mount(volume=volume, path=path, sub_path=mount.get("subPath") or None,
                                read_only=bool(mount.get("readOnly"))))
        except SpecError as exc:
            raise AdmissionDenied(exc.message) from None
    return tuple(mounts)


def _request(container: Mapping[str, Any], resource: str, name: str) -> Fraction:
    resources = container.get("resources") or {}
    if not isinstance(resources, dict):
        raise AdmissionDenied(f"container {quote(name)}: resources must be an object")
    requests = m._resource_map(resources, "requests", name)
    limits = m._resource_map(resources, "limits", name)
    value = requests.get(resource, limits.get(resource))
    return Fraction(0) if value is None else m.parse_quantity(value, f"container {quote(name)}: {resource}")


def effective(values: list[tuple[str, Fraction]]) -> Fraction:
    """A pod's effective request, as the scheduler counts it: the larger of the app containers
    plus every sidecar, and each init container plus the sidecars started before it."""
    apps = sum((v for kind, v in values if kind != "init"), Fraction(0))
    sidecars, inits = Fraction(0), Fraction(0)
    for kind, value in values:
        if kind == "sidecar":
            sidecars += value
        elif kind == "init":
            inits = max(inits, value + sidecars)
    return max(apps, inits)


def build_pod_job(spec: Mapping[str, Any], ann: Annotations, rule: Rule | None,
                  gpu_names: tuple[str, ...], volumes: Mapping[str, str]) -> JobSpec:
    """Every container as a part of one job spec; the pod's effective requests."""
    containers = _containers(spec)
    parts, jobs = [], []
    for container, kind, where in containers:
        job = m.build_job_spec(container, spec, ann, rule, gpu_names)
        jobs.append(job)
        parts.append(Part(name=container["name"], kind=kind, image=job.image, hpc_image=job.hpc_image,
                          command=job.command, args=job.args, env_passthrough=job.env_passthrough,
                          env_from=job.env_from, working_dir=job.working_dir,
                          mounts=_mounts(container, where, volumes)))
    used = {mount.volume for part in parts for mount in part.mounts}
    kinds = [kind for _, kind, _ in containers]
    cpu = effective([(k, _request(c, "cpu", c["name"])) for (c, k, _) in containers])
    memory = effective([(k, _request(c, "memory", c["name"])) for (c, k, _) in containers])
    gpus = jobs[0].resources.gpus if ann.gpus is not None else int(effective(
        [(k, Fraction(j.resources.gpus or 0)) for k, j in zip(kinds, jobs, strict=True)]))
    base = next(job for job, kind in zip(jobs, kinds, strict=True) if kind == "app")
    resources = replace(base.resources, cpus_per_task=m._ceil(cpu) or None,
                        memory_mb=m._ceil(memory, m.MIB) or None, gpus=gpus or None)
    try:
        return replace(base, image=None, hpc_image=None, command=(), args=(), env_passthrough=(),
                       env_from=False, working_dir=None, container=WHOLE_POD, resources=resources,
                       parts=tuple(parts),
                       volumes=tuple(PodVolume(name, kind) for name, kind in volumes.items() if name in used))
    except SpecError as exc:
        raise AdmissionDenied(f"{PREFIX}container {quote(WHOLE_POD)}: {exc.message}") from None


# --- the pod --------------------------------------------------------------------------------

def ready_port(config: WebhookConfig, index: int) -> int | None:
    """Each connector's readiness port (the containers share the pod's network)."""
    port = config.ready_port + index if config.ready_port else 0
    return port if 0 < port <= 65535 else None


def part_command(config: WebhookConfig, index: int, part: Part, leader: bool) -> list[str]:
    """The connector's command; no readiness port for an init container (it has no probe)."""
    port = ready_port(config, index) if part.kind != "init" else None
    name = part.name
    return [config.connector_python, "-I", *m.CONNECTOR_ARGS, *(["--ready-port", str(port)] if port else []),
            "--part", name, *(["--leader"] if leader else [])]


def private_mounts(job: JobSpec) -> list[dict[str, Any]]:
    """The leader's mounts of the volumes the kubelet fills, where the connector copies them from."""
    return [{"name": volume.name, "mountPath": f"{VOLUMES_DIR}/{volume.name}", "readOnly": True}
            for volume in job.volumes if volume.kind == "files"]


def _connector(original: dict[str, Any], index: int, part: Part, job: JobSpec, config: WebhookConfig,
               every_env: list[Any], every_env_from: list[Any]) -> dict[str, Any]:
    leader = part.name == job.leader
    base = {key: value for key, value in original.items()
            if key not in ("env", "envFrom", "volumeMounts", "lifecycle")}
    connector = m._make_connector(base, config)
    connector["command"] = part_command(config, index, part, leader)
    if part.kind == "init":  # the API server refuses both on an init container that is no sidecar
        connector.pop("lifecycle", None)
        connector.pop("readinessProbe", None)
    elif "readinessProbe" in connector:
        port = ready_port(config, index)
        if port is None:
            connector.pop("readinessProbe")
        else:
            connector["readinessProbe"] = {**connector["readinessProbe"], "tcpSocket": {"port": port}}
    if leader:
        connector["env"] = [*every_env, *connector.get("env", [])]
        if every_env_from:
            connector["envFrom"] = every_env_from
        connector["volumeMounts"] = [*connector["volumeMounts"], *private_mounts(job)]
    return connector


def mutate_whole_pod(pod: Mapping[str, Any], namespace: str, config: WebhookConfig, policy: Policy | None,
                     ann: Annotations) -> dict[str, Any]:
    """The pod with every container a connector of the same name; the pod's job spec."""
    metadata = pod["metadata"]
    annotations = metadata["annotations"]
    spec = pod["spec"]
    volumes = check_offloadable(spec, ann)
    for name in volumes:
        if name in m.RESERVED_VOLUMES:
            raise AdmissionDenied(f"spec.volumes: the name {quote(name)} is reserved for hpc-offload; "
                                  "rename the volume")
    rule = policy.rule_for(namespace) if policy is not None else None
    job = build_pod_job(spec, ann, rule, config.gpu_resource_names, volumes)
    if rule is not None:
        for part in job.parts:
            rule.check(job.part_spec(part.name), ann.backend or "")

    containers = _containers(spec)
    every_env: list[Any] = []
    every_env_from: list[Any] = []
    for index, (container, _, where) in enumerate(containers):
        prefix = f"{ENV_PREFIX}{index}_"
        every_env += m.prefixed_env(m.listed(container.get("env"), f"{where}.env"), prefix)
        every_env_from += m.prefixed_env_from(m.listed(container.get("envFrom"), f"{where}.envFrom"), prefix)
    rewritten = {id(container): _connector(container, index, job.parts[index], job, config, every_env,
                                           every_env_from)
                 for index, (container, _, _) in enumerate(containers)}

    annotations = {**annotations, JOB_SPEC: m.job_spec_json(job), STATUS: INJECTED}
    check_annotations_size(annotations)
    new_spec = m._mutate_pod_spec(spec, ann.backend or "", config)
    for key in ("initContainers", "containers"):
        if isinstance(spec.get(key), list):
            new_spec[key] = [rewritten.get(id(c), c) for c in spec[key]]
    return {**pod, "metadata": {**metadata, "annotations": annotations}, "spec": new_spec}


# --- a marked pod (reinvocation) --------------------------------------------------------------

def verify_whole_pod(pod: Mapping[str, Any], job: JobSpec, backend: str, namespace: str,
                     config: WebhookConfig, policy: Policy | None, not_ours: Any) -> None:
    """A marked whole pod is our own output: every container a connector of a part, each with
    the command and volumes the mutation gives it; every part within the policy."""
    from webhook.injected import check_connector_volumes

    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise not_ours("it has no spec")
    containers = [c for key in ("initContainers", "containers")
                  for c in m.listed(spec.get(key), f"spec.{key}") if isinstance(c, dict)]
    names = [c.get("name") for c in containers]
    if names != [part.name for part in job.parts]:
        raise not_ours(f"its containers are not the parts its {JOB_SPEC} names")
    for index, (container, part) in enumerate(zip(containers, job.parts, strict=True)):
        if container.get("command") != part_command(config, index, part, part.name == job.leader) \
                or "args" in container:
            raise not_ours(f"container {quote(part.name)} does not run the connector's command")
        if container.get("image") != config.connector_image:
            raise not_ours(f"container {quote(part.name)} does not run the connector image "
                           f"{config.connector_image}")
        check_connector_volumes(spec, container, backend)
    rule = policy.rule_for(namespace) if policy is not None else None
    if rule is not None:
        for part in job.parts:
            rule.check(job.part_spec(part.name), backend)
