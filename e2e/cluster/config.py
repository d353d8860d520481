"""Where the local cluster keeps things, and the fixed addresses it uses.

Everything lives outside the clone: build outputs under the cache (keyed by version, so they
survive `down` and other clones), runtime state under /var/lib so `down` can remove it whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Kubernetes version built from the Go module proxy. v1.34.4 is the newest 1.34 patch that
#: `go list -m -versions` reports (and it was built and run on this machine kind).
K8S_VERSION = os.environ.get("HPC_OFFLOAD_K8S_VERSION", "v1.34.4")

CACHE_DIR = Path(os.environ.get("HPC_OFFLOAD_CACHE", "/var/cache/hpc-offload"))
STATE_DIR = Path(os.environ.get("HPC_OFFLOAD_CLUSTER_STATE", "/var/lib/hpc-offload/cluster"))

#: The CNI bridge: created by us, its gateway is the node IP and the address pods use to reach
#: services on the host (the SLURM testbed's sshd and slurmrestd listen on it too).
BRIDGE = "cni0"
BRIDGE_GATEWAY = "10.88.0.1"
POD_CIDR = "10.88.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DNS = "10.96.0.10"
API_PORT = 6443
ETCD_CLIENT_PORT = 23790
ETCD_PEER_PORT = 23800
NODE_NAME = os.environ.get("HPC_OFFLOAD_NODE_NAME", "hpc-offload-node")

PAUSE_IMAGE = "localhost/hpc-offload/pause:3.10"
PROJECT_IMAGE = "hpc-offload:dev"
PROJECT_IMAGE_FULL = "docker.io/library/hpc-offload:dev"
BASE_IMAGE = "localhost/hpc-offload/python-base:bookworm"


@dataclass(frozen=True)
class Paths:
    """Every file and directory of one cluster instance, derived from its state dir."""

    root: Path = STATE_DIR

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def k8s_bin_dir(version: str = K8S_VERSION) -> Path:
    """Built binaries, one directory per version, reused by every later run."""
    return CACHE_DIR / "k8s" / version / "bin"
