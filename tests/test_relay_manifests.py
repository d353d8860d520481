"""manifests/: every overlay installs the relay as docs/relay.md promises — one hardened pod
whose only API permission is TokenReview, reachable by connectors through its Service with the
certificate the webhook uses, and a webhook config that tells connectors where it is."""

from __future__ import annotations

import pytest
import yaml

from tests.test_manifests import IMAGES, NS, _rules_for, build, of_kind, one
from webhook.config import WebhookConfig

OVERLAY_NAMES = sorted(IMAGES)


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_the_relay_pod_is_hardened_and_probed(overlay: str) -> None:
    objs = build(overlay)
    deploy = one(objs, "Deployment", "hpc-offload-relay")
    assert deploy["metadata"]["namespace"] == NS
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "hpc-offload-relay"
    context = pod["securityContext"]
    assert context["runAsNonRoot"] and context["seccompProfile"]["type"] == "RuntimeDefault"
    [container] = pod["containers"]
    assert container["image"] == IMAGES[overlay]
    assert container["args"][:2] == ["hpc-offload", "relay"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"scheme": "HTTPS", "port": "https", "path": path}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "hpc-offload-tls"
    assert volumes["state"]["emptyDir"]["medium"] == "Memory"  # credentials never on disk


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_the_relay_may_only_create_tokenreviews(overlay: str) -> None:
    objs = build(overlay)
    granted = {(kind, group, resource, verb)
               for kind, rule in _rules_for(objs, "hpc-offload-relay")
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {("ClusterRoleBinding", "authentication.k8s.io", "tokenreviews", "create")}


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_connectors_are_told_where_the_relay_is_and_its_certificate_names_it(overlay: str) -> None:
    objs = build(overlay)
    svc = one(objs, "Service", "hpc-offload-relay")
    labels = one(objs, "Deployment", "hpc-offload-relay")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    [config_map] = [c for c in of_kind(objs, "ConfigMap") if c["metadata"]["name"].startswith("hpc-offload-config")]
    config = WebhookConfig.from_mapping(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert config.relay_ca_file == "/etc/hpc-offload/tls/ca.crt"
    if overlay == "dev":  # no cluster DNS on the local cluster: a fixed ClusterIP
        assert config.relay_url == f"https://{svc['spec']['clusterIP']}:443"
    else:
        assert config.relay_url == "https://hpc-offload-relay.hpc-offload.svc:443"
    if overlay == "cert-manager":
        names = one(objs, "Certificate", "hpc-offload-serving")["spec"]["dnsNames"]
    else:
        names = [a.split("=", 1)[1] for a in one(objs, "Job", "hpc-offload-certs")["spec"]["template"]["spec"][
            "containers"][0]["args"] if a.startswith(("--dns=", "--ip="))]
    assert "hpc-offload-relay.hpc-offload.svc" in names
    if overlay == "dev":
        assert svc["spec"]["clusterIP"] in names


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_the_relay_takes_https_only(overlay: str) -> None:
    [policy] = [p for p in of_kind(build(overlay), "NetworkPolicy") if p["metadata"]["name"] == "hpc-offload-relay"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "hpc-offload-relay"}
    assert [rule["ports"] for rule in policy["spec"]["ingress"]] == [[{"port": 8443, "protocol": "TCP"}]]
