"""A pod that arrives already marked `hpc.offload/status: injected`.

Reinvocation (`reinvocationPolicy: IfNeeded`) and re-applying a mutated pod bring our own
output back, and it must be admitted unchanged. A tenant can write the same marker by hand,
with a job spec of their own: so the marked pod is held to two things before it is admitted
(issue 12, item 7):

- it is what the webhook writes: the connector command reading the job spec through our
  downward-API volume, the profile volume naming `hpc.offload/backend`;
- its job spec is one the cluster policy admits today, exactly as a new pod's would be.

The API server defaults the pod after our patch (e.g. a volume's `defaultMode`), so the check
compares what matters, not whole objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from connector.errors import SpecError
from connector.spec import JobSpec
from webhook.annotations import (
    BACKEND,
    JOB_SPEC,
    PREFIX,
    STATUS,
    AdmissionDenied,
    Annotations,
    check_annotations_size,
    quote,
)
from webhook.config import WebhookConfig
from webhook.policy import Policy

# Keys only a connector's runtime fills in: the webhook never writes them.
_FORBIDDEN_SPEC_KEYS = ("pod", "env")


def _not_ours(why: str) -> AdmissionDenied:
    return AdmissionDenied(
        f"{STATUS}: this pod is marked as mutated by the hpc-offload webhook, but {why}; the "
        f"marker is the webhook's to set: remove {STATUS} and {JOB_SPEC} and create the pod "
        "again to have it offloaded", 403)


def verify_injected(pod: Mapping[str, Any], parsed: Annotations, namespace: str,
                    config: WebhookConfig, policy: Policy | None) -> JobSpec:
    """The job spec of a marked pod, once it is shown to be our own output within the policy;
    else AdmissionDenied naming what is wrong."""
    from webhook import mutation  # mutation imports this module lazily, for marked pods

    annotations = _dict(_dict(pod.get("metadata")).get("annotations"))
    if parsed.backend is None:
        raise _not_ours(f"it has no {BACKEND}")
    job = _job_spec(annotations.get(JOB_SPEC))
    if job.parts:  # a whole pod: every container is a part's connector
        from webhook.whole_pod import verify_whole_pod

        verify_whole_pod(pod, job, parsed.backend, namespace, config, policy, _not_ours)
        check_annotations_size(annotations)
        return job
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise _not_ours("it has no spec")
    containers = [c for c in mutation.listed(spec.get("containers"), "spec.containers")
                  if isinstance(c, dict)]
    container = next((c for c in containers if c.get("name") == job.container), None)
    if job.container is None or container is None:
        raise _not_ours(f"its {JOB_SPEC} names no container of the pod")
    if container.get("command") != mutation.connector_command(config) or "args" in container:
        raise _not_ours(f"container {quote(job.container)} does not run the connector's command")
    if container.get("image") != config.connector_image:
        raise _not_ours(f"container {quote(job.container)} does not run the connector image "
                        f"{config.connector_image}")
    _check_volumes(spec, container, parsed.backend, mutation)
    rule = policy.rule_for(namespace) if policy is not None else None
    if rule is not None:
        rule.check(job, parsed.backend)
    mutation.check_staging(container, job)
    check_annotations_size(annotations)
    return job


def _job_spec(text: Any) -> JobSpec:
    if not isinstance(text, str) or not text:
        raise _not_ours(f"it has no {JOB_SPEC}")
    try:
        data = orjson.loads(text)
        if not isinstance(data, dict):
            raise SpecError("it is not a JSON object")
        written = [key for key in _FORBIDDEN_SPEC_KEYS if key in data]
        if written:
            raise SpecError(f"it carries {', '.join(written)}, which the webhook never writes")
        job = JobSpec.from_dict(data)
        job.check_runnable()
    except (orjson.JSONDecodeError, SpecError) as exc:
        why = exc.message if isinstance(exc, SpecError) else f"not JSON ({exc})"
        raise _not_ours(f"its {JOB_SPEC} is not one the webhook writes: {why}") from None
    return job


def check_connector_volumes(spec: Mapping[str, Any], container: Mapping[str, Any], backend: str) -> None:
    """The volumes and mounts one connector needs, as the webhook writes them."""
    from webhook import mutation

    _check_volumes(spec, container, backend, mutation)


def _check_volumes(spec: Mapping[str, Any], container: Mapping[str, Any], backend: str,
                   mutation: Any) -> None:
    """The connector reads the job spec and the profile through our volumes, as we wrote them
    (give or take the API server's defaults)."""
    volumes = {v.get("name"): v for v in mutation.listed(spec.get("volumes"), "spec.volumes")
               if isinstance(v, dict)}
    mounts = {m.get("name"): m for m in mutation.listed(container.get("volumeMounts"),
                                                        "volumeMounts") if isinstance(m, dict)}
    for want in mutation.added_volumes(backend):
        name = want["name"]
        have = volumes.get(name)
        if have is None or _volume_shape(have) != _volume_shape(want):
            raise _not_ours(f"volume {quote(name)} is not the one the webhook adds")
    for want in mutation.added_mounts():
        have = mounts.get(want["name"])
        if have is None or mutation.normalise(have.get("mountPath", "")) != want["mountPath"] \
                or bool(have.get("readOnly")) != bool(want.get("readOnly")) or have.get("subPath"):
            raise _not_ours(f"container {quote(container.get('name'))} does not mount volume "
                            f"{quote(want['name'])} at {want['mountPath']}")


def _volume_shape(volume: Mapping[str, Any]) -> Any:
    """What a volume gives the connector, without the fields the API server defaults."""
    if "downwardAPI" in volume:
        items = _dict(volume.get("downwardAPI")).get("items")
        return ("downwardAPI", tuple(
            (item.get("path"), _dict(item.get("fieldRef")).get("fieldPath"),
             bool(item.get("resourceFieldRef")))
            for item in (items if isinstance(items, list) else ()) if isinstance(item, dict)))
    if "projected" in volume:
        sources = _dict(volume.get("projected")).get("sources")
        shape = []
        for source in sources if isinstance(sources, list) else ():
            if not isinstance(source, dict) or len(source) != 1:
                return ("projected", "unexpected source")
            (kind, body), = source.items()
            body = body if isinstance(body, dict) else {}
            shape.append((kind, body.get("name"), bool(body.get("optional")),
                          bool(body.get("items"))))
        return ("projected", tuple(shape))
    if "emptyDir" in volume:
        return ("emptyDir",)
    return (PREFIX, "other", tuple(sorted(str(k) for k in volume if k != "name")))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
