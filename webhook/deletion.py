"""The delete admission of an offloaded pod: always allowed, and the pod named for the relay.

Kubernetes stops a deleted pod's connector when the kubelet gets to it: on a busy node 100
pods take 30-40 s, and their jobs hold the allocation until then. The API server admits the
deletes within seconds, so a second webhook entry (DELETE, `failurePolicy: Ignore`) sends them
here and the relay cancels those jobs at its next tick. Like `handle_review` this is a pure
function; `webhook.relay_notice` does the sending. A dry run names no pod (the webhook
declares `sideEffects: NoneOnDryRun`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webhook.admission import ReviewResult, allow, read_request
from webhook.annotations import BACKEND


@dataclass(frozen=True)
class DeletedPod:
    namespace: str
    name: str
    uid: str


def handle_delete_review(body: bytes | str) -> tuple[ReviewResult, DeletedPod | None]:
    """The answer (always allowed unless the review itself is malformed) and the offloaded pod
    being deleted, if the relay should hear of it."""
    parsed = read_request(body)
    if isinstance(parsed, ReviewResult):
        return parsed, None
    uid, request = parsed
    return allow(uid), _deleted_pod(request)


def _deleted_pod(request: dict[str, Any]) -> DeletedPod | None:
    if request.get("operation") != "DELETE" or request.get("subResource") or request.get("dryRun"):
        return None
    pod = request.get("oldObject")
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    if not isinstance(metadata, dict):
        return None
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict) or BACKEND not in annotations:
        return None
    namespace = request.get("namespace") or metadata.get("namespace")
    name, uid = metadata.get("name"), metadata.get("uid")
    if not all(isinstance(value, str) and value for value in (namespace, name, uid)):
        return None
    return DeletedPod(str(namespace), str(name), str(uid))
