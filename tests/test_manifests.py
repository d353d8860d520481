"""manifests/: every overlay builds with kubectl's kustomize and keeps the install's promises.

Least privilege, the admission settings that keep an outage from blocking other pods, the
hardened webhook pod and the image each overlay runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.config import WebhookConfig
from webhook.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ROOT / "manifests" / "overlays"
NS = "hpc-offload"
MWC_FILE = ROOT / "manifests" / "base" / "mutatingwebhookconfiguration.yaml"
# the matchCondition (issue 12 item 7): exercised against a real API server in
# tests/test_security_apiserver.py
CEL = yaml.safe_load(MWC_FILE.read_text())["webhooks"][0]["matchConditions"][0]["expression"]
IMAGES = {"self-signed": "hpc-offload:0.1.0", "cert-manager": "hpc-offload:0.1.0",
          "dev": "hpc-offload:dev"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")

_cache: dict[str, list[dict[str, Any]]] = {}


def build(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize manifests/overlays/OVERLAY` as a list of objects."""
    if overlay not in _cache:
        out = subprocess.run(["kubectl", "kustomize", str(OVERLAYS / overlay)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        _cache[overlay] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return _cache[overlay]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    paths: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "Deployment": lambda o: o["spec"]["template"]["spec"],
        "Job": lambda o: o["spec"]["template"]["spec"],
        "CronJob": lambda o: o["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    }
    return [(f"{o['kind']}/{o['metadata']['name']}", paths[o["kind"]](o))
            for o in objs if o["kind"] in paths]


def webhook_pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment", "hpc-offload-webhook")["spec"]["template"]["spec"]


def configmap_data(objs: list[dict[str, Any]], prefix: str, key: str) -> Any:
    maps = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith(prefix)]
    assert len(maps) == 1, prefix
    return yaml.safe_load(maps[0]["data"][key]), maps[0]["metadata"]["name"]


@pytest.mark.parametrize("overlay", sorted(IMAGES))
def test_everything_namespaced_in_hpc_offload(overlay: str) -> None:
    objs = build(overlay)
    assert one(objs, "Namespace")["metadata"]["name"] == NS
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                      "MutatingWebhookConfiguration"}
    for o in objs:
        if o["kind"] not in cluster_scoped:
            assert o["metadata"].get("namespace") == NS, o["metadata"]["name"]


@pytest.mark.parametrize("overlay", sorted(IMAGES))
def test_webhook_configuration(overlay: str) -> None:
    mwc = one(build(overlay), "MutatingWebhookConfiguration", "hpc-offload")
    hook, deletes = mwc["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["timeoutSeconds"] == 5
    assert [c["expression"] for c in hook["matchConditions"]] == [CEL]
    [expr] = hook["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn"
    assert set(expr["values"]) == {"kube-system", NS}
    [rule] = hook["rules"]
    assert rule["operations"] == ["CREATE", "UPDATE"] and rule["resources"] == ["pods"]
    assert "oldObject" in CEL and "hpc.offload/" in CEL
    assert rule["apiGroups"] == [""] and rule["apiVersions"] == ["v1"]
    assert hook["clientConfig"]["service"] == {
        "name": "hpc-offload-webhook", "namespace": NS, "path": "/mutate", "port": 443}
    assert "caBundle" not in hook["clientConfig"]  # filled in by certs install / cainjector
    # the delete notices: never block a delete, never tell the relay of a dry run
    assert deletes["name"] == "deletes.hpc-offload.io"
    assert deletes["failurePolicy"] == "Ignore" and deletes["sideEffects"] == "NoneOnDryRun"
    assert [rule["operations"] for rule in deletes["rules"]] == [["DELETE"]]
    assert deletes["namespaceSelector"] == hook["namespaceSelector"]
    assert deletes["clientConfig"]["service"] == {**hook["clientConfig"]["service"], "path": "/deleted"}
    [condition] = deletes["matchConditions"]
    assert "'hpc.offload/backend' in oldObject.metadata.annotations" in condition["expression"]


@pytest.mark.parametrize("overlay", sorted(IMAGES))
def test_service_and_pdb(overlay: str) -> None:
    objs = build(overlay)
    svc = one(objs, "Service", "hpc-offload-webhook")
    [port] = svc["spec"]["ports"]
    assert port["port"] == 443 and port["targetPort"] == "https"
    container = webhook_pod(objs)["containers"][0]
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in container["ports"]
    labels = one(objs, "Deployment", "hpc-offload-webhook")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    pdb = one(objs, "PodDisruptionBudget", "hpc-offload-webhook")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if overlay == "dev":  # one replica: a minAvailable 1 budget would block every drain
        assert "minAvailable" not in pdb["spec"] and pdb["spec"]["maxUnavailable"] == 1
    else:
        assert pdb["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("overlay", sorted(IMAGES))
def test_webhook_deployment(overlay: str) -> None:
    objs = build(overlay)
    deploy = one(objs, "Deployment", "hpc-offload-webhook")
    assert deploy["spec"]["replicas"] == (1 if overlay == "dev" else 2)
    pod = deploy["spec"]["template"]["spec"]
    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    [container] = pod["containers"]
    args = container["args"]
    assert args[:2] == ["hpc-offload", "serve"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in args[2:])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for flag, volume in (("cert", "tls"), ("key", "tls"), ("config", "config"),
                         ("policy", "policy")):
        assert flags[flag].startswith(mounts[volume]["mountPath"] + "/")
        assert mounts[volume]["readOnly"] is True
    assert volumes["tls"]["secret"]["secretName"] == "hpc-offload-tls"
    assert not volumes["tls"]["secret"].get("optional")  # pods wait for the Secret
    assert volumes["tmp"]["emptyDir"] is not None and mounts["tmp"]["mountPath"] == "/tmp"
    assert flags["metrics-dir"].startswith("/tmp/")
    # the mounted ConfigMaps exist (the generated name carries a hash) and are valid
    config, config_name = configmap_data(objs, "hpc-offload-config", "config.yaml")
    assert volumes["config"]["configMap"]["name"] == config_name
    WebhookConfig.from_mapping(config)
    policy, policy_name = configmap_data(objs, "hpc-offload-policy", "policy.yaml")
    assert volumes["policy"]["configMap"]["name"] == policy_name
    assert Policy.from_mapping(policy).unmatched == "allow"  # permissive by default
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert (get["scheme"], get["port"], get["path"]) == ("HTTPS", "https", path)
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("overlay", sorted(IMAGES))
def test_every_pod_hardened(overlay: str) -> None:
    specs = pod_specs(build(overlay))
    assert specs
    for where, pod in specs:
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == 10001, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where


@pytest.mark.parametrize("overlay", sorted(IMAGES))
def test_images_per_overlay(overlay: str) -> None:
    objs = build(overlay)
    image = IMAGES[overlay]
    for where, pod in pod_specs(objs):
        for c in pod["containers"]:
            assert c["image"] == image, where
            assert c["imagePullPolicy"] == "IfNotPresent", where
    config, _ = configmap_data(objs, "hpc-offload-config", "config.yaml")
    assert config["connector_image"] == image
    assert config["image_pull_policy"] == "IfNotPresent"


@pytest.mark.parametrize("overlay", sorted(IMAGES))
def test_webhook_has_no_api_access(overlay: str) -> None:
    objs = build(overlay)
    sa = webhook_pod(objs)["serviceAccountName"]
    assert one(objs, "ServiceAccount", sa)["automountServiceAccountToken"] is False
    assert webhook_pod(objs)["automountServiceAccountToken"] is False
    for binding in of_kind(objs, "RoleBinding") + of_kind(objs, "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            assert not (subject["kind"] == "ServiceAccount" and subject["name"] == sa), \
                binding["metadata"]["name"]


def _rules_for(objs: list[dict[str, Any]], sa: str) -> list[tuple[str, dict[str, Any]]]:
    rules = []
    for binding in of_kind(objs, "RoleBinding") + of_kind(objs, "ClusterRoleBinding"):
        if any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NS
               for s in binding["subjects"]):
            role = one(objs, binding["roleRef"]["kind"], binding["roleRef"]["name"])
            rules += [(binding["kind"], r) for r in role["rules"]]
    return rules


@pytest.mark.parametrize("overlay", ["self-signed", "dev"])
def test_cert_job_least_privilege(overlay: str) -> None:
    objs = build(overlay)
    job = one(objs, "Job", "hpc-offload-certs")
    pod = job["spec"]["template"]["spec"]
    relay = ["--dns=hpc-offload-relay.hpc-offload.svc", "--dns=hpc-offload-relay.hpc-offload.svc.cluster.local",
             *(["--ip=10.96.0.20"] if overlay == "dev" else [])]  # the relay shares the certificate
    assert pod["containers"][0]["args"] == [
        "hpc-offload", "certs", "install", "--service=hpc-offload-webhook",
        f"--namespace={NS}", "--secret=hpc-offload-tls", "--webhook-config=hpc-offload", *relay]
    cron = one(objs, "CronJob", "hpc-offload-certs-renew")
    cron_pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron_pod["containers"][0]["args"] == pod["containers"][0]["args"]
    sa = pod["serviceAccountName"]
    assert cron_pod["serviceAccountName"] == sa
    granted: set[tuple[str, str, str, str | None]] = set()
    for binding_kind, rule in _rules_for(objs, sa):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [None]:
                        granted.add((binding_kind, f"{group}/{resource}", verb, name))
    assert granted == {
        ("RoleBinding", "/secrets", "get", "hpc-offload-tls"),
        ("RoleBinding", "/secrets", "update", "hpc-offload-tls"),
        ("RoleBinding", "/secrets", "patch", "hpc-offload-tls"),
        ("RoleBinding", "/secrets", "create", None),  # create cannot name its object
        ("ClusterRoleBinding", "admissionregistration.k8s.io/mutatingwebhookconfigurations",
         "get", "hpc-offload"),
        ("ClusterRoleBinding", "admissionregistration.k8s.io/mutatingwebhookconfigurations",
         "patch", "hpc-offload"),
    }


def test_cert_manager_injects_ca() -> None:
    objs = build("cert-manager")
    mwc = one(objs, "MutatingWebhookConfiguration", "hpc-offload")
    ref = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    namespace, name = ref.split("/")
    cert = one(objs, "Certificate", name)
    assert namespace == NS and cert["spec"]["secretName"] == "hpc-offload-tls"
    assert "hpc-offload-webhook.hpc-offload.svc" in cert["spec"]["dnsNames"]
    issuer = one(objs, "Issuer", cert["spec"]["issuerRef"]["name"])
    assert issuer["spec"]["ca"]["secretName"] == one(objs, "Certificate", "hpc-offload-ca")[
        "spec"]["secretName"]
    assert not of_kind(objs, "Job")
    assert [r["metadata"]["name"] for r in of_kind(objs, "ClusterRole")] == ["hpc-offload-relay"]


def test_user_overlay_replaces_policy(tmp_path: Path) -> None:
    """The documented way to set the policy (and what the e2e suite does): a generator with
    behavior replace over the plain ConfigMap, in an overlay referring to ours by a relative
    path (kustomize refuses absolute ones)."""
    (tmp_path / "policy.yaml").write_text("unmatched: deny\nrules: [{name: lab, namespaces: [lab]}]\n")
    relative = os.path.relpath(OVERLAYS / "dev", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [relative],
        "configMapGenerator": [{"name": "hpc-offload-policy", "namespace": NS,
                                "behavior": "replace", "files": ["policy.yaml"]}]}))
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    policy, name = configmap_data(objs, "hpc-offload-policy", "policy.yaml")
    assert policy["unmatched"] == "deny"
    volumes = {v["name"]: v for v in webhook_pod(objs)["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == name
