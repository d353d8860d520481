"""Issue 12 through a real API server (the local cluster, `hpc-offload e2e cluster up`):
items 4 and 7 depend on what Kubernetes does around the webhook — the ServiceAccount plugin
that mounts the token before webhooks run, and the configuration's matchConditions, which
only the API server evaluates (CEL over object and oldObject).

The webhook is the real server (`hpc-offload serve`) on loopback, registered with the
MutatingWebhookConfiguration of manifests/base (its rules and matchConditions as shipped),
pointed at it by URL and limited to a namespace of this test.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.localserver import LocalServer, make_certs

ROOT = Path(__file__).resolve().parents[1]
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
POLICY = """
rules:
  - name: sec
    namespaces: ["sec-*"]
    profiles: [site]
    maxTime: "01:00:00"
    maxNodes: 1
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local cluster needs root")


class Setup:
    def __init__(self, kubectl: Any, namespace: str, server: LocalServer) -> None:
        self.kubectl, self.namespace, self.server = kubectl, namespace, server

    def run(self, *args: str, stdin: str | None = None) -> Any:
        return self.kubectl(*args, "-n", self.namespace, stdin=stdin, check=False)

    def create(self, obj: dict[str, Any]) -> Any:
        return self.run("create", "-f", "-", stdin=json.dumps(obj))

    def get(self, name: str) -> dict[str, Any]:
        out = self.run("get", "pod", name, "-o", "json")
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def admissions(self) -> int:
        return sum('"msg":"admission"' in line for line in self.server.logs().splitlines())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from e2e.cluster import ensure_up
    from e2e.kube import Kubectl

    cluster = ensure_up(progress=lambda msg: None)
    kubectl = Kubectl(cluster)
    tag = uuid.uuid4().hex[:8]
    namespace = f"sec-{tag}"
    root = tmp_path_factory.mktemp("apiserver")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    certs = make_certs(root / "certs")
    config = root / "config.yaml"  # the image the cluster runs; no relay
    config.write_text("connector_image: hpc-offload:dev\nimage_pull_policy: IfNotPresent\n")
    base = yaml.safe_load((ROOT / "manifests" / "base" / "mutatingwebhookconfiguration.yaml")
                          .read_text())
    with LocalServer(certs, root / "server.log", policy=policy, config=config) as server:
        hook = dict(base["webhooks"][0])
        hook["name"] = f"sec-{tag}.hpc-offload.io"
        hook["clientConfig"] = {"url": f"{server.url}/mutate",
                                "caBundle": base64.b64encode((certs / "ca.crt").read_bytes())
                                .decode()}
        hook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        mwc = {"apiVersion": "admissionregistration.k8s.io/v1",
               "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": f"hpc-offload-sec-{tag}"}, "webhooks": [hook]}
        kubectl("create", "namespace", namespace)
        created = kubectl("create", "-f", "-", stdin=json.dumps(mwc), check=False)
        assert created.returncode == 0, created.stderr  # the API server compiled the CEL
        others = exclude_namespace(kubectl, namespace, ours=f"hpc-offload-sec-{tag}")
        try:
            yield Setup(kubectl, namespace, server)
        finally:
            exclude_namespace(kubectl, namespace, ours=f"hpc-offload-sec-{tag}", names=others,
                              undo=True)
            kubectl("delete", "mutatingwebhookconfiguration", f"hpc-offload-sec-{tag}",
                    "--wait=false", check=False)
            kubectl("delete", "namespace", namespace, "--wait=false", "--grace-period=0",
                    check=False)


def exclude_namespace(kubectl: Any, namespace: str, ours: str, names: list[str] | None = None,
                      undo: bool = False) -> list[str]:
    """Keep (or stop keeping) the test's namespace out of every other hpc-offload webhook on
    the cluster (the e2e suite's install, a Helm release): two of them on one pod reinvoke
    each other, and a stale install without ready pods refuses every annotated pod. A JSON
    patch, not a replace: `kubectl replace` would rewrite the last-applied annotation with
    server fields and break the next `kubectl apply -k` of the install."""
    listed = json.loads(kubectl("get", "mutatingwebhookconfigurations", "-o", "json").stdout)
    marker = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [namespace]}
    done = []
    for mwc in listed["items"]:
        name = mwc["metadata"]["name"]
        if name == ours or (names is not None and name not in names):
            continue
        if not any(hook["name"].endswith(".hpc-offload.io") for hook in mwc["webhooks"]):
            continue
        ops: list[dict[str, Any]] = []
        for i, hook in enumerate(mwc["webhooks"]):
            selector = hook.get("namespaceSelector") or {}
            expressions = selector.get("matchExpressions") or []
            if undo:
                ops += [op for j, e in reversed(list(enumerate(expressions))) if e == marker
                        for op in ({"op": "test", "path": f"/webhooks/{i}/namespaceSelector/matchExpressions/{j}",
                                    "value": marker},
                                   {"op": "remove", "path": f"/webhooks/{i}/namespaceSelector/matchExpressions/{j}"})]
            elif "matchExpressions" in selector:
                ops.append({"op": "add", "path": f"/webhooks/{i}/namespaceSelector/matchExpressions/-",
                            "value": marker})
            else:
                ops.append({"op": "add", "path": f"/webhooks/{i}/namespaceSelector",
                            "value": {**selector, "matchExpressions": [marker]}})
        if ops:
            patched = kubectl("patch", "mutatingwebhookconfiguration", name, "--type=json",
                              "-p", json.dumps(ops), check=False)
            assert undo or patched.returncode == 0, patched.stderr
        done.append(name)
    return done


def pod(name: str, **annotations: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                     "containers": [
                         {"name": "main", "image": "registry.example.org/app:1",
                          "command": ["run"]},
                         {"name": "sidecar", "image": "hpc-offload:dev",
                          "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}}


def offloaded(name: str) -> dict[str, Any]:
    return pod(name, **{"hpc.offload/backend": "site", "hpc.offload/container": "main",
                        "hpc.offload/time": "30"})


def test_item4_the_api_servers_token_mount_is_replaced_in_the_connector_only(setup: Setup) -> None:
    """Item 4: the ServiceAccount plugin mounts the token into every container before the
    webhook runs; the connector's mount is replaced by an empty directory (and the plugin,
    reinvoked, does not add it back), the sidecar keeps its token."""
    created = setup.create(offloaded("token-check"))
    assert created.returncode == 0, created.stderr
    spec = setup.get("token-check")["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    main = {m["mountPath"]: m["name"] for m in containers["main"]["volumeMounts"]}
    side = {m["mountPath"]: m["name"] for m in containers["sidecar"]["volumeMounts"]}
    assert main[SA_PATH] == "hpc-offload-no-token" and "emptyDir" in volumes["hpc-offload-no-token"]
    assert side[SA_PATH].startswith("kube-api-access-")
    assert "serviceAccountToken" in json.dumps(volumes[side[SA_PATH]])
    assert containers["main"]["command"][:2] == ["/opt/hpc-offload/bin/python3", "-I"]
    assert spec.get("automountServiceAccountToken") is not False


def test_item7_annotations_cannot_change_after_creation(setup: Setup) -> None:
    """Item 7: `kubectl annotate` adding, changing or removing an hpc.offload/* annotation
    is refused by the API server with the webhook's reason; a label change is not even sent
    to the webhook (the matchCondition compares object and oldObject)."""
    assert setup.create(offloaded("immutable")).returncode == 0
    for args in (["hpc.offload/nodes=64"], ["--overwrite", "hpc.offload/time=UNLIMITED"],
                 ["--overwrite", 'hpc.offload/job-spec={"command":["x"]}'],
                 ["hpc.offload/backend-"], ["hpc.offload/status-"]):
        out = setup.run("annotate", "pod", "immutable", *args)
        assert out.returncode != 0, args
        assert "cannot be changed after the pod is created" in out.stderr, out.stderr
    before = setup.admissions()
    assert setup.run("label", "pod", "immutable", "team=a").returncode == 0
    assert setup.run("annotate", "pod", "immutable", "example.com/note=x").returncode == 0
    assert setup.admissions() == before, "an unrelated update reached the webhook"
    annotations = setup.get("immutable")["metadata"]["annotations"]
    assert annotations["hpc.offload/time"] == "30" and annotations["hpc.offload/status"]


def test_item7_an_unannotated_pod_cannot_be_annotated_later(setup: Setup) -> None:
    """Item 7: adding the trigger to a running pod is refused too."""
    assert setup.create(pod("plain")).returncode == 0
    out = setup.run("annotate", "pod", "plain", "hpc.offload/backend=site")
    assert out.returncode != 0 and "cannot be changed" in out.stderr


def test_item7_a_hand_written_marker_is_checked(setup: Setup) -> None:
    """Item 7: a pod carrying `hpc.offload/status: injected` (with or without the trigger)
    reaches the webhook and is refused unless it is the webhook's own output in policy."""
    out = setup.create(pod("marker-only", **{"hpc.offload/status": "injected"}))
    assert out.returncode != 0 and "hpc.offload/status" in out.stderr, out.stderr
    ours = setup.get("token-check") if setup.run("get", "pod", "token-check").returncode == 0 \
        else None
    if ours is None:
        assert setup.create(offloaded("token-check")).returncode == 0
        ours = setup.get("token-check")
    copy = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "copy", "annotations": dict(ours["metadata"]["annotations"])},
            "spec": {k: v for k, v in ours["spec"].items() if k != "nodeName"}}
    spec = json.loads(copy["metadata"]["annotations"]["hpc.offload/job-spec"])
    spec["resources"].update(time_limit=0, nodes=64)  # the reported attack
    copy["metadata"]["annotations"]["hpc.offload/job-spec"] = json.dumps(spec)
    out = setup.create(copy)
    assert out.returncode != 0 and 'policy rule "sec"' in out.stderr, out.stderr


def test_item3_the_injected_command_ignores_a_hostile_pythonpath_in_the_image(setup: Setup) -> None:
    """Item 3, in the real image: with a pod PYTHONPATH holding a `json.py` (written by an init
    container into a volume the offloaded container mounts, as the reported attack did) the
    console script `hpc-connector` is hijacked, the webhook's command is not."""
    from webhook.config import load_config
    from webhook.mutation import connector_command

    command = connector_command(load_config(None, environ={}))
    evil = "raise SystemExit('hijacked by PYTHONPATH')"
    env = [{"name": "PYTHONPATH", "value": "/data"}, {"name": "PATH", "value": "/data:/usr/bin"}]
    spec = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "isolated"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                     "volumes": [{"name": "data", "emptyDir": {}}],
                     "initContainers": [{"name": "plant", "image": "hpc-offload:dev",
                                         "imagePullPolicy": "Never",
                                         "command": ["sh", "-c", f'echo "{evil}" > /data/json.py'],
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "containers": [
                         {"name": name, "image": "hpc-offload:dev", "imagePullPolicy": "Never",
                          "command": argv, "env": env,
                          "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
                         for name, argv in (("injected", [*command[:4], "--help"]),
                                            ("console", ["/opt/hpc-offload/bin/hpc-connector",
                                                         "--help"]))]}}
    assert setup.create(spec).returncode == 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        phase = setup.get("isolated")["status"].get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    injected = setup.run("logs", "isolated", "-c", "injected").stdout
    console = setup.run("logs", "isolated", "-c", "console").stdout + \
        setup.run("logs", "isolated", "-c", "console").stderr
    assert "Usage:" in injected and "hijacked" not in injected, injected
    assert "hijacked by PYTHONPATH" in console, console
