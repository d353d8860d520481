"""The node: containerd (own socket/root/state), the CNI bridge config, kubelet and kube-proxy.

Settings this machine needs (FACTS.md): `restrict_oom_score_adj` (there is no
CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj and every sandbox fails without it),
cgroupfs (no systemd), swap tolerated, and the bridge gateway as node IP (a loopback node IP
is rejected, and without a node address the API server cannot fetch logs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from e2e.cluster import procs
from e2e.cluster.config import (
    BRIDGE,
    BRIDGE_GATEWAY,
    NODE_NAME,
    PAUSE_IMAGE,
    POD_CIDR,
    Paths,
)
from e2e.cluster.controlplane import Pki
from e2e.cluster.files import write_if_changed

CNI_BIN_DIR = Path("/usr/lib/cni")


def containerd_config(paths: Paths) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{paths.containerd_socket}"

[ttrpc]
  address = "{paths.containerd_socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{paths.cni_conf_dir}"
"""


def cni_conflist() -> dict[str, object]:
    """bridge + host-local + portmap; no ipMasq: pods only talk to the bridge and each other."""
    return {
        "cniVersion": "1.0.0",
        "name": "hpc-offload-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": "/var/lib/cni/networks",
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def ctr(paths: Paths, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ctr` against our containerd, in the CRI's namespace."""
    return subprocess.run(
        ["ctr", "--address", str(paths.containerd_socket), "-n", "k8s.io", *args],
        check=check,
        capture_output=True,
        text=True,
    )


def start_containerd(paths: Paths) -> None:
    for tool in ("containerd", "runc", "ctr"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: apt-get install containerd runc")
    for d in (paths.containerd_root, paths.containerd_state, paths.cni_conf_dir, paths.run):
        d.mkdir(parents=True, exist_ok=True)
    if write_if_changed(paths.containerd_config, containerd_config(paths)):
        procs.stop(paths, "containerd")  # containers survive it (their shims keep running)
    conf = paths.cni_conf_dir / "10-hpc-offload.conflist"
    write_if_changed(conf, json.dumps(cni_conflist(), indent=2))
    procs.start(paths, "containerd", ["/usr/bin/containerd", "--config", str(paths.containerd_config)])
    procs.wait_for(
        "containerd",
        lambda: ctr(paths, "version", check=False).returncode == 0,
        30,
        paths.log("containerd"),
    )


def kubelet_config(paths: Paths, p: Pki) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(p.ca.cert)},
        },
        "authorization": {"mode": "Webhook"},
        "address": BRIDGE_GATEWAY,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        "registerNode": True,
        # our images are imported, never pulled back: keep GC and eviction out of the way
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "localStorageCapacityIsolation": True,
        # bench/scale.py runs 100 offloaded pods beside the installation and e2e namespaces
        "maxPods": 250,
        # Secret and ConfigMap volumes are refreshed at each pod sync: 10 s (default 1 min)
        # lets the e2e suite see a rotated profile Secret reach a running connector quickly
        "syncFrequency": "10s",
    }


def start_kubelet(paths: Paths, bin_dir: Path, p: Pki) -> None:
    paths.kubelet_root.mkdir(parents=True, exist_ok=True)
    config = paths.root / "kubelet-config.yaml"
    if write_if_changed(config, yaml.safe_dump(kubelet_config(paths, p), sort_keys=False)):
        procs.stop(paths, "kubelet")  # a running kubelet keeps its old settings otherwise; pods live on
    procs.start(
        paths,
        "kubelet",
        [
            str(bin_dir / "kubelet"),
            f"--config={config}",
            f"--kubeconfig={p.kubeconfigs['kubelet']}",
            f"--root-dir={paths.kubelet_root}",
            f"--cert-dir={paths.kubelet_root / 'pki'}",
            f"--node-ip={BRIDGE_GATEWAY}",
            f"--hostname-override={NODE_NAME}",
            "--v=1",
        ],
    )


def kube_proxy_config(p: Pki) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(p.kubeconfigs["kube-proxy"])},
        "hostnameOverride": NODE_NAME,
        "bindAddress": BRIDGE_GATEWAY,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # node ports only on the bridge, never on the machine's external interface
        "nodePortAddresses": [f"{BRIDGE_GATEWAY}/32"],
        # leave the host's conntrack sysctls alone (we cannot raise limits here anyway)
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def kube_proxy_synced() -> bool:
    """kube-proxy has written the rule for the `kubernetes` Service."""
    out = subprocess.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"], capture_output=True, text=True).stdout
    return "default/kubernetes:https" in out


def start_kube_proxy(paths: Paths, bin_dir: Path, p: Pki) -> None:
    config = paths.root / "kube-proxy-config.yaml"
    write_if_changed(config, yaml.safe_dump(kube_proxy_config(p), sort_keys=False))
    procs.start(paths, "kube-proxy", [str(bin_dir / "kube-proxy"), f"--config={config}", "--v=1"])


def wait_kube_proxy(paths: Paths) -> None:
    """kube-proxy waits for its Node object (registered by the kubelet) before it syncs."""
    procs.wait_for("kube-proxy rules", kube_proxy_synced, 60, paths.log("kube-proxy"))
