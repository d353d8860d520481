"""Session fixtures for the e2e suite: one local cluster per run, and API clients for it.

`ensure_up()` is idempotent and fast when the cluster already runs (`hpc-offload e2e cluster
up`); on a fresh machine it builds and starts everything (minutes: see e2e/README.md).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from e2e.cluster import ClusterInfo, ensure_up, load_image


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr)


@pytest.fixture(scope="session")
def cluster() -> ClusterInfo:
    return ensure_up(progress=_progress)


@pytest.fixture(scope="session")
def project_image(cluster: ClusterInfo) -> str:
    """hpc-offload:dev built from the repo's Dockerfile and imported into the node."""
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
