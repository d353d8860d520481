"""handle_review: AdmissionReview v1 in and out; never raises; 200 or 400 only."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.admission import OUTCOMES, handle_review
from webhook.config import WebhookConfig
from webhook.policy import Policy, PolicyStore

CONFIG = WebhookConfig()


def realistic_pod() -> dict[str, Any]:
    """A pod as the API server sends it: labels, owner, managedFields, a few env vars."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "neuroblastoma-", "namespace": "primage",
            "labels": {"app": "neuroblastoma", "batch.kubernetes.io/job-name": "neuroblastoma",
                       "controller-uid": "0d1f6b4e-1c1e-4c38-9a47-1f6f1c0c2a10"},
            "annotations": {"hpc.offload/backend": "prometheus",
                            "hpc.offload/partition": "plgrid", "hpc.offload/time": "02:00:00"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                 "name": "neuroblastoma", "uid": "0d1f6b4e", "controller": True,
                                 "blockOwnerDeletion": True}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                               "apiVersion": "v1", "fieldsType": "FieldsV1",
                               "fieldsV1": {f"f:{i}": {"f:x": {}} for i in range(60)}}],
        },
        "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "serviceAccountName": "default", "enableServiceLinks": True,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
            "containers": [{
                "name": "neuroblastoma", "image": "mbiesek/neuroblastoma:1.0",
                "command": ["python3", "/app/neuroblastoma.py"],
                "args": ["--input", "input", "--output", "output"],
                "env": [{"name": f"VAR_{i}", "value": str(i)} for i in range(10)],
                "resources": {"requests": {"cpu": "4", "memory": "8Gi"},
                              "limits": {"memory": "8Gi"}},
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "kube-api-access-abcde", "readOnly": True,
                     "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "nb-data"}},
                {"name": "kube-api-access-abcde", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}},
            ],
        },
    }


def review(pod: Any = None, **request: Any) -> dict[str, Any]:
    req = {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
           "kind": {"group": "", "version": "v1", "kind": "Pod"},
           "resource": {"group": "", "version": "v1", "resource": "pods"},
           "namespace": "primage", "operation": "CREATE",
           "object": realistic_pod() if pod is None else pod, **request}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def call(body: Any, policy: Policy | None = None) -> tuple[int, dict[str, Any], str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    result = handle_review(raw, CONFIG, PolicyStore.of(policy))
    assert result.outcome in OUTCOMES
    status, answer = result
    return status, answer, result.outcome


def test_mutated_pod_gets_a_jsonpatch() -> None:
    body = review()
    status, answer, outcome = call(body)
    assert status == 200 and outcome == "mutated"
    response = answer["response"]
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert response["uid"] == body["request"]["uid"] and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert all("managedFields" not in op["path"] for op in patch)
    pod = body["request"]["object"]
    patched = jsonpatch.apply_patch(pod, patch)
    assert patched["metadata"]["managedFields"] == pod["metadata"]["managedFields"]
    assert patched["metadata"]["annotations"]["hpc.offload/status"] == "injected"
    assert patched["spec"]["containers"][0]["image"] == CONFIG.connector_image


def test_already_injected_pod_is_allowed_without_patch() -> None:
    body = review()
    _, answer, _ = call(body)
    patched = jsonpatch.apply_patch(body["request"]["object"],
                                    json.loads(base64.b64decode(answer["response"]["patch"])))
    status, again, outcome = call(review(patched))
    assert status == 200 and outcome == "allowed_unchanged"
    assert again["response"] == {"uid": body["request"]["uid"], "allowed": True}


def test_unannotated_and_non_create_are_allowed_untouched() -> None:
    pod = realistic_pod()
    del pod["metadata"]["annotations"]
    assert call(review(pod))[2] == "allowed_unchanged"
    assert call(review(None, operation="UPDATE", oldObject=realistic_pod()))[2] == \
        "allowed_unchanged"
    assert call(review(None, operation="DELETE", object=None))[2] == "allowed_unchanged"
    assert call(review(None, subResource="ephemeralcontainers"))[2] == "allowed_unchanged"


def test_dry_run_gets_the_same_answer() -> None:
    assert call(review())[1] == call(review(None, dryRun=True))[1]


def test_bad_value_is_denied_400() -> None:
    pod = realistic_pod()
    pod["metadata"]["annotations"]["hpc.offload/runtime"] = "docker"
    status, answer, outcome = call(review(pod))
    assert status == 200 and outcome == "denied"
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"] == {
        "code": 400, "reason": "BadRequest",
        "message": 'hpc.offload/runtime: "docker" is not allowed; use one of singularity, '
                   "apptainer, charliecloud, podman, enroot, none"}


def test_policy_violation_is_denied_403() -> None:
    policy = Policy.from_yaml("rules: [{name: lab, namespaces: [lab]}]")
    status, answer, outcome = call(review(), policy)
    assert status == 200 and outcome == "denied"
    assert answer["response"]["status"]["code"] == 403
    assert answer["response"]["status"]["reason"] == "Forbidden"
    assert '"primage"' in answer["response"]["status"]["message"]


def test_namespace_comes_from_the_request() -> None:
    policy = Policy.from_yaml("rules: [{name: lab, namespaces: [primage]}]")
    assert call(review(), policy)[2] == "mutated"


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "the body is not JSON"),
        (b"\xff\xfe", "the body is not JSON"),
        (b"[]", "not a JSON object"),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}},
         "expected apiVersion admission.k8s.io/v1"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}, "kind AdmissionReview"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request: missing"),
        (review(None, uid=""), "request.uid: missing"),
        (review(None, uid=None), "request.uid: missing"),
        (review(None, object=None), "request.object: missing"),
        (review(None, resource={"group": "apps", "version": "v1", "resource": "deployments"},
                kind={"group": "apps", "version": "v1", "kind": "Deployment"}),
         "this webhook only admits pods, got apps/v1/deployments"),
        (b"[" * 100000, "the body is"),
    ],
)
def test_malformed_reviews_are_400(body: Any, reason: str) -> None:
    status, answer, outcome = call(body)
    assert status == 400 and outcome == "bad_request"
    assert reason in answer["error"]


def test_internal_errors_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    import webhook.admission as admission

    def boom(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(admission, "mutate", boom)
    status, answer, outcome = call(review())
    assert status == 200 and outcome == "denied"
    assert answer["response"]["status"]["code"] == 500


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                        children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=200),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({
        "apiVersion": st.sampled_from(["admission.k8s.io/v1", "v1"]),
        "kind": st.sampled_from(["AdmissionReview", "Pod"]),
        "request": st.one_of(_JSON, st.fixed_dictionaries({
            "uid": st.one_of(st.text(max_size=5), st.none()),
            "operation": st.sampled_from(["CREATE", "UPDATE", 3]),
            "resource": st.one_of(_JSON, st.just({"group": "", "resource": "pods"})),
            "object": st.one_of(_JSON, st.fixed_dictionaries({
                "metadata": st.one_of(_JSON, st.fixed_dictionaries({
                    "annotations": st.one_of(_JSON, st.dictionaries(
                        st.sampled_from(["hpc.offload/backend", "hpc.offload/gpus",
                                         "hpc.offload/container", "x"]),
                        st.one_of(st.text(max_size=6), st.just("c")), max_size=3)),
                })),
                "spec": st.one_of(_JSON, st.just({"containers": [{"name": "c", "image": "i"}]})),
            })),
        })),
    }).map(lambda v: json.dumps(v).encode()),
))
def test_random_reviews_answer_200_or_400(body: bytes) -> None:
    result = handle_review(body, CONFIG, None)
    assert result.status in (200, 400) and result.outcome in OUTCOMES
    json.dumps(result.body)
    if result.status == 200:
        assert result.body["response"]["allowed"] in (True, False)
