"""The Helm chart against the kustomize base (issue 14 item 5): charts/hpc-offload is what
`hpc-offload chart generate` makes of manifests/, and `helm template` (a real helm, built from
its Go module) renders the same objects as `kubectl kustomize` of each overlay, compared as
normalised dicts. Editing one without the other fails here."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpc_cli.chart import CHART_DIR, MANIFESTS, REPO, differences, find_kubectl, generate, project_version

DEV_VALUES = REPO / "charts" / "hpc-offload-dev.values.yaml"
HELM_ONLY_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by")
HASHED = re.compile(r"^(hpc-offload-config)-[0-9a-z]{10}$")  # kustomize's / the chart's content hash
HASHED_JOB = re.compile(r"^(hpc-offload-certs)-[0-9a-f]{8}$")  # the chart's Job: a changed one is a new Job

Key = tuple[str, str, str]


@pytest.fixture(scope="module")
def helm() -> str:
    from e2e.cluster.helm import ensure_helm

    return str(ensure_helm(progress=lambda msg: print(msg)))


@pytest.fixture(scope="module")
def kubectl() -> str:
    return find_kubectl()


def helm_template(helm: str, *args: str, chart: Path = CHART_DIR, release: str = "hpc-offload",
                  namespace: str = "hpc-offload") -> list[dict[str, Any]]:
    proc = subprocess.run([helm, "template", release, str(chart), "-n", namespace, *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kustomize(kubectl: str, overlay: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _replace(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    return new if value == old else value


def normalise(objects: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Objects by (kind, namespace, name), with what legitimately differs made equal: Helm's
    release labels, the content hash in a generated ConfigMap's name (and its references) and
    in the chart's Job's name, and YAML files in ConfigMaps compared parsed (key order, quoting)."""
    out: dict[Key, dict[str, Any]] = {}
    objects = copy.deepcopy(objects)
    for obj in objects:
        match = HASHED.match(obj["metadata"]["name"]) if obj["kind"] == "ConfigMap" else None
        if match:
            objects = [_replace(o, obj["metadata"]["name"], match[1] + "-HASH") for o in objects]

    for obj in objects:
        meta = obj["metadata"]
        match = HASHED_JOB.match(meta["name"]) if obj["kind"] == "Job" else None
        if match:
            meta["name"] = match[1]
        for label in HELM_ONLY_LABELS:
            (meta.get("labels") or {}).pop(label, None)
        if obj["kind"] == "ConfigMap":
            obj["data"] = {k: yaml.safe_load(v) if k.endswith(".yaml") and k != "policy.yaml" else v
                           for k, v in (obj.get("data") or {}).items()}
        out[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj
    return out


def diff(a: Any, b: Any, path: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                yield f"{path}/{k}: {'missing in helm' if k not in a else 'only in helm'}"
            else:
                yield from diff(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from diff(x, y, f"{path}/{i}")
    elif a != b:
        yield f"{path}: helm {a!r} != kustomize {b!r}"


def assert_same(chart_objects: list[dict[str, Any]], kustomize_objects: list[dict[str, Any]]) -> None:
    helm_side, kust_side = normalise(chart_objects), normalise(kustomize_objects)
    assert sorted(helm_side) == sorted(kust_side), (
        f"only in helm: {sorted(set(helm_side) - set(kust_side))}; "
        f"only in kustomize: {sorted(set(kust_side) - set(helm_side))}")
    problems = [f"{k}: {d}" for k in sorted(helm_side) for d in diff(helm_side[k], kust_side[k])]
    assert not problems, "helm template and kubectl kustomize differ:\n" + "\n".join(problems[:30])


def test_the_chart_is_what_the_generator_makes_of_the_base(kubectl: str, tmp_path: Path) -> None:
    fresh = tmp_path / "hpc-offload"
    generate(fresh, kubectl, project_version())
    assert differences(CHART_DIR, fresh) == [], "charts/hpc-offload is stale: run `hpc-offload chart generate`"


@pytest.mark.parametrize("mode", ["self-signed", "cert-manager"])
def test_helm_template_renders_the_overlays_objects(helm: str, kubectl: str, mode: str) -> None:
    rendered = helm_template(helm, "--set", "createNamespace=true", "--set", f"certificates={mode}")
    assert_same(rendered, kustomize(kubectl, MANIFESTS / "overlays" / mode))


def test_the_dev_values_render_the_dev_overlay(helm: str, kubectl: str) -> None:
    rendered = helm_template(helm, "--set", "createNamespace=true", "-f", str(DEV_VALUES))
    assert_same(rendered, kustomize(kubectl, MANIFESTS / "overlays" / "dev"))


def test_another_release_in_another_namespace_shares_no_name_or_namespace(helm: str) -> None:
    objects = helm_template(helm, "--set", "createNamespace=true", release="lab-offload", namespace="lab-system")
    text = yaml.safe_dump_all(objects)
    assert ".hpc-offload.svc" not in text and "namespace: hpc-offload\n" not in text
    assert "--namespace=hpc-offload" not in text
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
        if obj["kind"] not in ("Namespace", "MutatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "lab-system", obj["metadata"]
    assert [o["metadata"]["name"] for o in by_kind["Namespace"]] == ["lab-system"]
    assert [o["metadata"]["name"] for o in by_kind["MutatingWebhookConfiguration"]] == ["lab-offload"]
    cluster_roles = by_kind["ClusterRole"] + by_kind["ClusterRoleBinding"]
    assert all(o["metadata"]["name"].startswith("lab-offload-") for o in cluster_roles)
    hook = by_kind["MutatingWebhookConfiguration"][0]["webhooks"][0]
    assert hook["clientConfig"]["service"]["namespace"] == "lab-system"
    assert "lab-system" in hook["namespaceSelector"]["matchExpressions"][0]["values"]
    certs_role = next(o for o in by_kind["ClusterRole"] if o["metadata"]["name"] == "lab-offload-certs")
    assert certs_role["rules"][0]["resourceNames"] == ["lab-offload"]
    binding = next(o for o in by_kind["RoleBinding"] if o["metadata"]["name"] == "hpc-offload-certs")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hpc-offload-certs"}
    job = by_kind["Job"][0]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-config=lab-offload" in args and "--namespace=lab-system" in args
    assert HASHED_JOB.match(job["metadata"]["name"])
    again = next(o for o in helm_template(helm, release="lab-offload", namespace="lab-system") if o["kind"] == "Job")
    assert again["metadata"]["name"] == job["metadata"]["name"]  # stable while nothing changes
    moved = helm_template(helm, "--set", "image.tag=9.9", release="lab-offload", namespace="lab-system")
    assert next(o for o in moved if o["kind"] == "Job")["metadata"]["name"] != job["metadata"]["name"]
    config = yaml.safe_load(next(o for o in by_kind["ConfigMap"] if "config.yaml" in o["data"])["data"]["config.yaml"])
    assert config["relay_url"] == "https://hpc-offload-relay.lab-system.svc:443"


def test_values_reach_the_objects(helm: str) -> None:
    values = textwrap.dedent("""\
        image: {repository: registry.example.org/hpc-offload, tag: "1.2.3", pullPolicy: Always}
        webhook:
          replicas: 3
          namespaceSelector: {matchLabels: {hpc-offload: enabled}}
        connector:
          resources: {requests: {cpu: 20m, memory: 40Mi}, limits: {memory: 80Mi}}
        policy: |
          unmatched: deny
          rules: [{name: lab, namespaces: [lab]}]
    """)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        file.write(values)
        file.flush()
        objects = helm_template(helm, "-f", file.name)
    images = {c["image"] for o in objects if o["kind"] in ("Deployment", "Job", "CronJob")
              for c in _pod(o)["containers"]}
    assert images == {"registry.example.org/hpc-offload:1.2.3"}
    webhook = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "hpc-offload-webhook")
    assert webhook["spec"]["replicas"] == 3
    pdb = next(o for o in objects if o["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    mwc = next(o for o in objects if o["kind"] == "MutatingWebhookConfiguration")
    assert mwc["webhooks"][0]["namespaceSelector"] == {"matchLabels": {"hpc-offload": "enabled"}}
    configs = [o for o in objects if o["kind"] == "ConfigMap"]
    config = yaml.safe_load(next(o for o in configs if "config.yaml" in o["data"])["data"]["config.yaml"])
    assert config["connector_image"] == "registry.example.org/hpc-offload:1.2.3"
    assert config["image_pull_policy"] == "Always"
    assert config["connector_resources"] == {"requests": {"cpu": "20m", "memory": "40Mi"}, "limits": {"memory": "80Mi"}}
    policy = next(o for o in configs if "policy.yaml" in o["data"])["data"]["policy.yaml"]
    assert yaml.safe_load(policy) == {"unmatched": "deny", "rules": [{"name": "lab", "namespaces": ["lab"]}]}
    config_name = next(o for o in configs if "config.yaml" in o["data"])["metadata"]["name"]
    volumes = {v["name"]: v for v in _pod(webhook)["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_name  # a new config rolls the webhook


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    return (spec.get("jobTemplate", {}).get("spec", spec))["template"]["spec"]  # type: ignore[no-any-return]


def test_a_wrong_certificates_mode_is_refused(helm: str) -> None:
    proc = subprocess.run([helm, "template", "x", str(CHART_DIR), "--set", "certificates=vault"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and 'certificates: "vault" is not one of: cert-manager, self-signed' in proc.stderr


def test_the_generator_picks_up_a_new_object_of_the_base(helm: str, kubectl: str, tmp_path: Path) -> None:
    """A Deployment added to the base (as the relay was) reaches the chart with its replicas,
    image and namespace templated, and nobody edits the generator."""
    manifests = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, manifests)
    (manifests / "base" / "extra.yaml").write_text(textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: hpc-offload-extra-thing}
        spec:
          replicas: 4
          selector: {matchLabels: {app.kubernetes.io/name: hpc-offload-extra-thing}}
          template:
            metadata: {labels: {app.kubernetes.io/name: hpc-offload-extra-thing}}
            spec:
              containers:
                - {name: x, image: "hpc-offload:0.1.0", args: [hpc-offload, x, --namespace=hpc-offload]}
    """))
    kustomization = manifests / "base" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("resources:\n", "resources:\n  - extra.yaml\n", 1))
    chart = tmp_path / "chart" / "hpc-offload"
    generate(chart, kubectl, project_version(), manifests=manifests)
    assert (chart / "templates" / "deployment-extra-thing.yaml").exists()
    assert yaml.safe_load((chart / "values.yaml").read_text())["extraThing"]["replicas"] == 4
    for mode in ("self-signed", "cert-manager"):
        rendered = helm_template(helm, "--set", "createNamespace=true", "--set", f"certificates={mode}", chart=chart)
        assert_same(rendered, kustomize(kubectl, manifests / "overlays" / mode))
    other = helm_template(helm, "--set", "extraThing.replicas=1", chart=chart, namespace="elsewhere")
    extra = next(o for o in other if o["metadata"]["name"] == "hpc-offload-extra-thing")
    assert extra["spec"]["replicas"] == 1 and extra["metadata"]["namespace"] == "elsewhere"
    assert extra["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--namespace=elsewhere"


def test_helm_lint_passes(helm: str) -> None:
    for args in ([], ["--set", "certificates=cert-manager"], ["-f", str(DEV_VALUES)]):
        proc = subprocess.run([helm, "lint", "--strict", str(CHART_DIR), *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
