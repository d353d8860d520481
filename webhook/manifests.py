"""Workload walking: find the pod (template) in any manifest and mutate it as the webhook would.

Used by `hpc-offload render`, so a user sees offline exactly what admission will do to the
pods their Job, CronJob or Deployment creates: the same `mutate()` runs on the template.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from connector.backends import backend_class
from connector.backends.base import JobRequest
from connector.profile import Profile
from connector.spec import PodRef
from webhook.annotations import INJECTED, PREFIX, STATUS, AdmissionDenied
from webhook.config import WebhookConfig
from webhook.mutation import copy_json, mutate, read_job_spec
from webhook.policy import Policy

# kind -> path of its pod template (a Pod is its own "template")
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "PodTemplate": ("template",),
}
# The HPC-side job directory in rendered scripts: the connector uses the profile's workdir
# and the pod's UID, neither known offline.
PLACEHOLDER_JOB_DIR = "/HPC_WORKDIR/hpco-POD_UID"


class ManifestDenied(Exception):
    """A manifest whose pod the webhook would deny; `where` names the object."""

    def __init__(self, where: str, denial: AdmissionDenied) -> None:
        super().__init__(f"{where}: {denial.message}")
        self.where = where
        self.denial = denial


@dataclass(frozen=True)
class OffloadedPod:
    """One mutated pod (or template), for script rendering."""

    where: str
    namespace: str
    name: str
    pod: Mapping[str, Any]


def describe(obj: Mapping[str, Any], namespace: str) -> str:
    """`Kind namespace/name`, as messages name an object."""
    metadata = obj.get("metadata") or {}
    name = metadata.get("name") or f"{metadata.get('generateName') or ''}<generated>"
    return f"{obj.get('kind') or 'object'} {namespace}/{name}"


def mutate_manifest(
    obj: Any, default_namespace: str, config: WebhookConfig, policy: Policy | None
) -> tuple[Any, list[OffloadedPod]]:
    """The manifest with its pod template mutated (a deep copy); non-workloads pass through.

    Raises ManifestDenied when the webhook would deny the pod.
    """
    if not isinstance(obj, dict):
        return obj, []
    kind = obj.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List")
                          and isinstance(obj.get("items"), list)):
        result = copy_json(obj)
        offloaded: list[OffloadedPod] = []
        for index, item in enumerate(obj.get("items") or []):
            result["items"][index], pods = mutate_manifest(item, default_namespace, config,
                                                           policy)
            offloaded += pods
        return result, offloaded
    path = TEMPLATE_PATHS.get(kind) if isinstance(kind, str) else None
    if path is None:
        return copy_json(obj), []
    metadata = obj.get("metadata") or {}
    namespace = str(metadata.get("namespace") or default_namespace)
    where = describe(obj, namespace)
    template = _get(obj, path)
    if not isinstance(template, dict):
        return copy_json(obj), []
    try:
        mutated = copy_json(mutate(template, namespace, config, policy))  # shares with obj
    except AdmissionDenied as exc:
        raise ManifestDenied(where, exc) from None
    result = copy_json(obj)
    if path:
        _get(result, path[:-1])[path[-1]] = mutated
    else:
        result = mutated
    annotations = (mutated.get("metadata") or {}).get("annotations") or {}
    if annotations.get(STATUS) != INJECTED:
        return result, []
    if kind == "Pod":
        name = metadata.get("name") or f"{metadata.get('generateName') or 'pod-'}xxxxx"
    else:  # a placeholder for the generated pod name
        name = f"{metadata.get('name') or str(kind).lower()}-xxxxx"
    return result, [OffloadedPod(where, namespace, str(name), mutated)]


def misplaced_annotations(obj: Any) -> Iterator[str]:
    """Warnings for `hpc.offload/*` keys on a workload's own metadata: only the pod
    template's annotations reach the pods the webhook sees."""
    if not isinstance(obj, dict) or obj.get("kind") in (None, "Pod"):
        return
    if obj.get("kind") not in TEMPLATE_PATHS:
        return
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    keys = sorted(k for k in annotations if isinstance(k, str) and k.startswith(PREFIX))
    if keys:
        where = "spec.jobTemplate.spec.template" if obj["kind"] == "CronJob" else \
            ".".join(TEMPLATE_PATHS[obj["kind"]])
        yield (f"{obj['kind']} {(obj.get('metadata') or {}).get('name')}: {', '.join(keys)} "
               f"on the {obj['kind']}'s own metadata have no effect; put them on "
               f"{where}.metadata.annotations")


def script_for(pod: OffloadedPod, backend_type: str = "slurm-ssh") -> str:
    """The batch script a backend of this type would submit for this pod (placeholder job
    dir; no connection is made: rendering needs none)."""
    spec = read_job_spec(pod.pod)
    assert spec is not None
    spec = replace(spec, pod=PodRef(namespace=pod.namespace, name=pod.name))
    backend = backend_class(backend_type)(Profile(backend=backend_type))
    names = spec.env_passthrough
    if spec.parts:  # a whole pod: each container's names under its part's prefix
        from connector.pod_render import pod_env_names

        names = tuple(pod_env_names(spec))
    env = dict.fromkeys(names, "")
    return backend.render(JobRequest(spec, PLACEHOLDER_JOB_DIR, env))


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj
