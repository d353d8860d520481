"""AdmissionReview v1 in, AdmissionReview v1 out: the only entry point the server calls.

`handle_review` never raises: a malformed review is HTTP 400 with a reason, a bad pod is an
`allowed: false` answer with the reason the user sees in `kubectl`, and an unexpected bug is a
denial too (failurePolicy: Fail would refuse the pod anyway; this way the user sees why).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from webhook.annotations import PREFIX, AdmissionDenied, shown_key
from webhook.config import WebhookConfig
from webhook.mutation import mutate
from webhook.patch import make_patch
from webhook.policy import PolicyStore

log = logging.getLogger(__name__)

API_VERSION = "admission.k8s.io/v1"
_REASONS = {400: "BadRequest", 403: "Forbidden", 500: "InternalError"}
OUTCOMES = ("allowed_unchanged", "mutated", "denied", "bad_request")


class ReviewResult(tuple[int, dict[str, Any]]):
    """`(http_status, body)`, unpackable as a pair, plus `.outcome` for the metrics and
    `.reason` for the log line."""

    outcome: str
    reason: str | None

    def __new__(cls, status: int, body: dict[str, Any], outcome: str,
                reason: str | None = None) -> ReviewResult:
        self = super().__new__(cls, (status, body))
        self.outcome = outcome
        self.reason = reason
        return self

    @property
    def status(self) -> int:
        return self[0]

    @property
    def body(self) -> dict[str, Any]:
        return self[1]


def handle_review(
    body: bytes | str, config: WebhookConfig, policy_store: PolicyStore | None = None
) -> ReviewResult:
    """Answer one AdmissionReview. `request.dryRun` needs nothing special: admission has no
    side effects (no API calls, no state), so a dry run gets exactly the real answer."""
    try:
        return _handle(body, config, policy_store)
    except Exception as exc:  # never raise into the server
        log.exception("admission review could not be handled")
        return _bad_request(f"internal error: {exc.__class__.__name__}")


def read_request(body: bytes | str) -> tuple[str, dict[str, Any]] | ReviewResult:
    """The review's uid and request, or the 400 answer saying what is wrong with it."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # nesting deeper than 1024 included
        return _bad_request(f"the body is not JSON: {exc}")
    if not isinstance(review, dict):
        return _bad_request("the body is not a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        return _bad_request(
            f"expected apiVersion {API_VERSION} kind AdmissionReview, got "
            f"{str(review.get('apiVersion'))[:100]!r} {str(review.get('kind'))[:100]!r}")
    request = review.get("request")
    if not isinstance(request, dict):
        return _bad_request("request: missing")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        return _bad_request("request.uid: missing")
    if not _is_pod(request):
        return _bad_request(
            f"this webhook only admits pods, got {_describe(request)}; check the "
            "MutatingWebhookConfiguration's rules")
    return uid, request


def _handle(body: bytes | str, config: WebhookConfig,
            policy_store: PolicyStore | None) -> ReviewResult:
    parsed = read_request(body)
    if isinstance(parsed, ReviewResult):
        return parsed
    uid, request = parsed
    operation = request.get("operation", "CREATE")
    if request.get("subResource") or operation not in ("CREATE", "UPDATE"):
        return allow(uid)
    pod = request.get("object")
    if operation == "UPDATE":
        changed = changed_annotations(pod, request.get("oldObject"))
        if changed:
            shown = ", ".join(changed[:5]) + (f" (+{len(changed) - 5} more)"
                                              if len(changed) > 5 else "")
            return _deny(uid, 403, f"{shown}: {PREFIX}* annotations cannot be "
                         "changed after the pod is created (the connector reads them); "
                         "delete the pod and create it again instead")
        return allow(uid)
    if not isinstance(pod, dict):
        return _bad_request("request.object: missing")

    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict) or not any(
        isinstance(key, str) and key.startswith(PREFIX) for key in annotations
    ):
        return allow(uid)  # the matchConditions normally keep these away; cheap anyway

    namespace = request.get("namespace") or (metadata or {}).get("namespace") or "default"
    policy = policy_store.get() if policy_store is not None else None
    # managedFields is never ours to change and dominates diff cost (istio): drop it from the
    # original before copying, so neither side of the diff carries it.
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    try:
        mutated = mutate(pod, str(namespace), config, policy)
    except AdmissionDenied as exc:
        return _deny(uid, exc.code, exc.message)
    except Exception as exc:
        log.exception("mutation failed for request %s", uid)
        return _deny(uid, 500, f"hpc-offload webhook internal error ({exc.__class__.__name__}); "
                     "please report it")
    patch = make_patch(pod, mutated)
    if not patch:
        return allow(uid)
    encoded = base64.b64encode(orjson.dumps(patch)).decode()
    response = {"uid": uid, "allowed": True, "patchType": "JSONPatch", "patch": encoded}
    return ReviewResult(200, _review(response), "mutated")


def _ours(obj: Any) -> dict[str, Any]:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict):
        return {}
    return {k: v for k, v in annotations.items() if isinstance(k, str) and k.startswith(PREFIX)}


def changed_annotations(new: Any, old: Any) -> list[str]:
    """`hpc.offload/*` keys an UPDATE adds, changes or removes, each described."""
    before, after = _ours(old), _ours(new)
    out = [f"{shown_key(key)} added" for key in after if key not in before]
    out += [f"{shown_key(key)} changed" for key in after
            if key in before and after[key] != before[key]]
    out += [f"{shown_key(key)} removed" for key in before if key not in after]
    return sorted(out)


def _is_pod(request: Mapping[str, Any]) -> bool:
    resource = request.get("resource")
    if isinstance(resource, dict):
        return resource.get("group", "") == "" and resource.get("resource") == "pods"
    kind = request.get("kind")
    return isinstance(kind, dict) and kind.get("group", "") == "" and kind.get("kind") == "Pod"


def _describe(request: Mapping[str, Any]) -> str:
    for key in ("resource", "kind"):
        value = request.get(key)
        if isinstance(value, dict):
            return "/".join(str(value.get(k, "")) for k in ("group", "version", key))[:200]
    return "no resource"


def _review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def allow(uid: str) -> ReviewResult:
    return ReviewResult(200, _review({"uid": uid, "allowed": True}), "allowed_unchanged")


def _deny(uid: str, code: int, message: str) -> ReviewResult:
    status = {"code": code, "reason": _REASONS.get(code, "BadRequest"), "message": message}
    response = {"uid": uid, "allowed": False, "status": status}
    return ReviewResult(200, _review(response), "denied", message)


def _bad_request(reason: str) -> ReviewResult:
    return ReviewResult(400, {"error": reason}, "bad_request", reason)
