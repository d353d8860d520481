"""Issue 12 in manifests/: item 7 (UPDATE reaches the webhook), item 10 (NetworkPolicy),
item 17 (the certificate job's rights named by resourceNames). Built with kubectl's own
kustomize; the admission behaviour of the configuration is tested against a real API server
in tests/test_security_apiserver.py."""

from __future__ import annotations

import shutil

import pytest

from tests.test_manifests import IMAGES, NS, build, of_kind, one, webhook_pod

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")



@pytest.mark.parametrize("overlay", sorted(IMAGES))
def test_item10_webhook_pods_have_a_network_policy(overlay: str) -> None:
    """Item 10: only HTTPS on the serving port reaches the webhook's pods, and the only
    connections they open are the relay's delete notices (and the DNS lookup of the relay)."""
    objs = build(overlay)
    policy = one(objs, "NetworkPolicy", "hpc-offload-webhook")
    assert policy["metadata"]["namespace"] == NS
    labels = one(objs, "Deployment", "hpc-offload-webhook")["spec"]["template"]["metadata"][
        "labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    relay, dns = policy["spec"]["egress"]
    assert relay["ports"] == [{"port": 8443, "protocol": "TCP"}]
    assert relay["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "hpc-offload-relay"}}}]
    assert {port["port"] for port in dns["ports"]} == {53}
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8443, "protocol": "TCP"}]
    container = webhook_pod(objs)["containers"][0]
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in container["ports"]
    assert "--bind=0.0.0.0:8443" in container["args"]


@pytest.mark.parametrize("overlay", sorted(IMAGES))
def test_item7_updates_of_annotated_pods_reach_the_webhook(overlay: str) -> None:
    """Item 7: the configuration sends UPDATEs too, and its condition reads oldObject so a
    removed annotation is caught."""
    hook = one(build(overlay), "MutatingWebhookConfiguration", "hpc-offload")["webhooks"][0]
    [rule] = hook["rules"]
    assert rule["operations"] == ["CREATE", "UPDATE"]
    [condition] = hook["matchConditions"]
    assert "oldObject.metadata.annotations" in condition["expression"]
    assert "startsWith('hpc.offload/')" in condition["expression"]


@pytest.mark.parametrize("overlay", ["self-signed", "dev"])
def test_item17_certificate_rights_are_named(overlay: str) -> None:
    """Item 17: the certificate job may touch only its own Secret and webhook configuration:
    every rule naming an existing object is limited by resourceNames (create, which cannot
    name its object, is the one exception Kubernetes forces)."""
    objs = build(overlay)
    roles = [r for r in of_kind(objs, "ClusterRole") + of_kind(objs, "Role")
             if r["metadata"]["name"] == "hpc-offload-certs"]
    assert len(roles) == 2
    for role in roles:
        for rule in role["rules"]:
            if rule["verbs"] == ["create"]:
                continue
            assert rule.get("resourceNames"), (role["metadata"]["name"], rule)
    cluster_role = one(objs, "ClusterRole", "hpc-offload-certs")
    assert cluster_role["rules"] == [{
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations"], "resourceNames": ["hpc-offload"],
        "verbs": ["get", "patch"]}]
