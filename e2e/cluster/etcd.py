"""etcd for the API server: Debian's etcd-server on loopback ports of its own.

Plain HTTP on 127.0.0.1 only: nothing but the local kube-apiserver talks to it, and off-default
ports keep it clear of any other etcd on the machine.
"""

from __future__ import annotations

import shutil

import requests

from e2e.cluster import procs
from e2e.cluster.config import ETCD_CLIENT_PORT, ETCD_PEER_PORT, Paths

NAME = "etcd"
CLIENT_URL = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"


def healthy() -> bool:
    try:
        return requests.get(f"{CLIENT_URL}/health", timeout=1).json().get("health") == "true"
    except (requests.RequestException, ValueError):
        return False


def start(paths: Paths) -> None:
    exe = shutil.which("etcd")
    if exe is None:
        raise RuntimeError("etcd not found: apt-get install etcd-server")
    paths.etcd_data.mkdir(parents=True, exist_ok=True)
    paths.etcd_data.chmod(0o700)
    peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    procs.start(
        paths,
        NAME,
        [
            exe,
            "--name=e2e",
            f"--data-dir={paths.etcd_data}",
            f"--listen-client-urls={CLIENT_URL}",
            f"--advertise-client-urls={CLIENT_URL}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=e2e={peer}",
            "--listen-metrics-urls=",
            "--log-level=warn",
        ],
        env={"ETCD_UNSUPPORTED_ARCH": ""},
    )
    procs.wait_for("etcd", healthy, 30, paths.log(NAME))
