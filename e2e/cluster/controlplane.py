"""kube-apiserver, kube-controller-manager and kube-scheduler, with the cluster's PKI.

The API server binds to the bridge gateway (not 0.0.0.0): pods reach it there through the
`kubernetes` ClusterIP, the host reaches it the same way, and nothing listens on the machine's
external interface. `--enable-aggregator-routing` makes it dial a Service's endpoints (pod IPs)
itself instead of the ClusterIP, so a webhook behind a Service is reached over the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3

from e2e.cluster import pki, procs
from e2e.cluster.config import (
    API_PORT,
    BRIDGE_GATEWAY,
    KUBERNETES_SERVICE_IP,
    NODE_NAME,
    SERVICE_CIDR,
    Paths,
)
from e2e.cluster.etcd import CLIENT_URL as ETCD_URL

API_SERVER = f"https://{BRIDGE_GATEWAY}:{API_PORT}"


@dataclass(frozen=True)
class Pki:
    """Paths of everything the control plane and node are started with."""

    ca: pki.Pair
    apiserver: pki.Pair
    kubelet_client: pki.Pair
    admin: pki.Pair
    sa_key: Path
    sa_pub: Path
    kubeconfigs: dict[str, Path]


# component -> (CN, organisations) of its client certificate
_IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("hpc-offload-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "kubelet": (f"system:node:{NODE_NAME}", ("system:nodes",)),
    "kube-proxy": ("system:kube-proxy", ()),
}


def ensure_pki(paths: Paths) -> Pki:
    """CA, API serving cert (all the names pods and the host use), client certs, kubeconfigs."""
    d = paths.pki
    ca = pki.ensure_ca(d)
    apiserver = pki.issue(
        ca,
        d / "apiserver",
        "kube-apiserver",
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            NODE_NAME,
        ),
        ips=("127.0.0.1", KUBERNETES_SERVICE_IP, BRIDGE_GATEWAY),
        server=True,
    )
    # system:masters so the kubelet's webhook authorizer lets the API server read logs/exec
    kubelet_client = pki.issue(
        ca,
        d / "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        orgs=("system:masters",),
        client=True,
    )
    sa_key, sa_pub = pki.ensure_sa_keys(d)
    kubeconfigs: dict[str, Path] = {}
    clients: dict[str, pki.Pair] = {}
    for name, (cn, orgs) in _IDENTITIES.items():
        clients[name] = pki.issue(ca, d / f"{name}-client", cn, orgs=orgs, client=True)
        path = paths.admin_kubeconfig if name == "admin" else paths.root / f"{name}.kubeconfig"
        kubeconfigs[name] = pki.write_kubeconfig(path, API_SERVER, ca.cert, clients[name], cn)
    return Pki(ca, apiserver, kubelet_client, clients["admin"], sa_key, sa_pub, kubeconfigs)


def _api_ok(p: Pki, path: str) -> bool:
    r = requests.get(
        f"{API_SERVER}{path}",
        cert=(str(p.admin.cert), str(p.admin.key)),
        verify=str(p.ca.cert),
        timeout=2,
    )
    return r.status_code == 200


def start_apiserver(paths: Paths, bin_dir: Path, p: Pki) -> None:
    procs.start(
        paths,
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={ETCD_URL}",
            f"--bind-address={BRIDGE_GATEWAY}",
            f"--advertise-address={BRIDGE_GATEWAY}",
            f"--secure-port={API_PORT}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--tls-cert-file={p.apiserver.cert}",
            f"--tls-private-key-file={p.apiserver.key}",
            f"--client-ca-file={p.ca.cert}",
            f"--kubelet-client-certificate={p.kubelet_client.cert}",
            f"--kubelet-client-key={p.kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            "--enable-aggregator-routing=true",
            "--allow-privileged=true",
            "--profiling=false",
            "--endpoint-reconciler-type=lease",
            "--v=1",
        ],
    )
    procs.wait_for("kube-apiserver", lambda: _api_ok(p, "/readyz"), 90, paths.log("kube-apiserver"))


def start_controller_manager(paths: Paths, bin_dir: Path, p: Pki) -> None:
    kc = p.kubeconfigs["controller-manager"]
    procs.start(
        paths,
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.sa_key}",
            f"--root-ca-file={p.ca.cert}",
            f"--cluster-signing-cert-file={p.ca.cert}",
            f"--cluster-signing-key-file={p.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ],
    )


def start_scheduler(paths: Paths, bin_dir: Path, p: Pki) -> None:
    kc = p.kubeconfigs["scheduler"]
    procs.start(
        paths,
        "kube-scheduler",
        [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ],
    )


def wait_controllers(paths: Paths, p: Pki) -> None:
    """Both report healthy on their loopback ports (self-signed serving certs: not verified)."""
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    for name, port in (("kube-controller-manager", 10257), ("kube-scheduler", 10259)):
        procs.wait_for(
            name,
            lambda port=port: (
                requests.get(
                    f"https://127.0.0.1:{port}/healthz",
                    verify=False,
                    timeout=2,  # noqa: S501
                ).status_code
                == 200
            ),
            60,
            paths.log(name),
        )
