"""Session fixtures for the e2e suite: one local cluster per run, and API clients for it.

`ensure_up()` is idempotent and fast when the cluster already runs (`hpc-offload e2e cluster
up`); on a fresh machine it builds and starts everything (minutes: see e2e/README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from e2e.cluster import ClusterInfo, ensure_up, load_image
from e2e.kube import POLICY, REPO, WEBHOOK_DEPLOYMENT, WEBHOOK_NS, Kubectl, apply_profile
from e2e.waiting import wait


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr)


#: Another cluster (kind, see e2e/kind/run.sh) instead of the local one: its kubeconfig, and
#: the address its pods reach the SLURM testbed at. The image must already be loaded there.
EXTERNAL_KUBECONFIG = os.environ.get("HPC_OFFLOAD_E2E_KUBECONFIG")
EXTERNAL_TESTBED_HOST = os.environ.get("HPC_OFFLOAD_E2E_TESTBED_HOST", "")


def _external_cluster() -> ClusterInfo:
    assert EXTERNAL_KUBECONFIG
    kubectl = shutil.which("kubectl")
    if kubectl is None or not EXTERNAL_TESTBED_HOST:
        pytest.exit("HPC_OFFLOAD_E2E_KUBECONFIG needs kubectl on PATH and HPC_OFFLOAD_E2E_TESTBED_HOST", 2)
    api = client.CoreV1Api(config.new_client_from_config(config_file=EXTERNAL_KUBECONFIG))
    node = api.list_node().items[0]
    return ClusterInfo(kubeconfig=Path(EXTERNAL_KUBECONFIG), api_server="", node_name=node.metadata.name,
                       bridge_gateway=EXTERNAL_TESTBED_HOST, version=node.status.node_info.kubelet_version,
                       bin_dir=Path(kubectl).parent, kubectl=Path(kubectl), state_dir=Path("/nonexistent"),
                       project_image="hpc-offload:dev")


@pytest.fixture(scope="session")
def cluster() -> ClusterInfo:
    if EXTERNAL_KUBECONFIG:
        return _external_cluster()
    return ensure_up(progress=_progress)


@pytest.fixture(scope="session")
def local_cluster(cluster: ClusterInfo) -> ClusterInfo:
    """For tests of the local cluster itself (its node address, its containerd socket)."""
    if EXTERNAL_KUBECONFIG:
        pytest.skip("checks the local cluster only")
    return cluster


@pytest.fixture(scope="session")
def project_image(cluster: ClusterInfo) -> str:
    """hpc-offload:dev built from the repo's Dockerfile and imported into the node."""
    if EXTERNAL_KUBECONFIG:
        return cluster.project_image  # loaded by e2e/kind/run.sh (kind load docker-image)
    return load_image(progress=_progress)


@pytest.fixture(scope="session")
def api_client(cluster: ClusterInfo) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture()
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (its pods with it)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # the service-account controller adds `default` shortly after; pods need it
    for _ in range(100):
        if core.list_namespaced_service_account(name).items:
            break
        time.sleep(0.1)
    yield name
    core.delete_namespace(name, grace_period_seconds=0)


# --- hpc-offload installed, and namespaces with a testbed profile ------------------------------

@pytest.fixture(scope="module")
def kubectl(cluster: ClusterInfo) -> Kubectl:
    return Kubectl(cluster)


@pytest.fixture(scope="module")
def installed(
    cluster: ClusterInfo, project_image: str, kubectl: Kubectl, core: client.CoreV1Api, tmp_path_factory
) -> None:
    """The dev overlay, applied as users apply it, plus an e2e policy; the webhook ready."""
    from testbed import api as testbed

    testbed.ensure_up(listen=[cluster.bridge_gateway])
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "policy.yaml").write_text(json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hpc-offload-policy", "namespace": WEBHOOK_NS},
        "data": {"policy.yaml": POLICY}}))
    (overlay / "kustomization.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources:
          - {os.path.relpath(REPO / "manifests" / "overlays" / "dev", overlay)}
        patches:
          - path: policy.yaml
    """))
    # a Job's template is immutable: a re-install replaces the finished cert Job
    kubectl("-n", WEBHOOK_NS, "delete", "job", "hpc-offload-certs", "--ignore-not-found", check=False)
    kubectl("apply", "-k", str(overlay))
    kubectl("-n", WEBHOOK_NS, "rollout", "status", f"deployment/{WEBHOOK_DEPLOYMENT}", "--timeout=180s")
    # the webhook answers through the API server once the caBundle is in place
    wait(
        "caBundle patched",
        lambda: kubectl(
            "get", "mutatingwebhookconfiguration", "hpc-offload", "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}"
        ).stdout.strip(),
    )


@pytest.fixture
def hpc_ns(installed, namespace: str, kubectl: Kubectl, cluster: ClusterInfo) -> str:
    """A namespace with the testbed profile, as `hpc-offload testbed profile … | kubectl apply`."""
    apply_profile(kubectl, namespace, "slurm-ssh", "testbed", cluster.bridge_gateway)
    return namespace
