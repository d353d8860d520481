"""Bring the whole local cluster up (idempotently), tear it down, and describe it.

`up` walks the components in dependency order and starts only what is not already running,
so it also repairs a half-started cluster. kube-proxy is started (and its rules checked)
before the kubelet, so no pod can dial a ClusterIP that has no rule behind it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from e2e.cluster import api, build, controlplane, etcd, images, network, node, procs
from e2e.cluster.config import (
    BRIDGE_GATEWAY,
    K8S_VERSION,
    NODE_NAME,
    PROJECT_IMAGE,
    Paths,
    k8s_bin_dir,
)

Progress = Callable[[str], None]

#: start order; `down` stops them in reverse
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "containerd",
    "kubelet",
)

#: Debian packages per executable that `up` needs
PACKAGES = {
    "etcd": "etcd-server",
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "buildah": "buildah",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "debootstrap": "debootstrap",
    "gcc": "gcc",
}
_CNI_PACKAGE = "containernetworking-plugins"


@dataclass(frozen=True)
class ClusterInfo:
    """What a test or a user needs to talk to the cluster."""

    kubeconfig: Path
    api_server: str
    node_name: str
    bridge_gateway: str
    version: str
    bin_dir: Path
    kubectl: Path
    state_dir: Path
    project_image: str


def info(paths: Paths | None = None) -> ClusterInfo:
    paths = paths or Paths()
    bin_dir = k8s_bin_dir()
    return ClusterInfo(
        kubeconfig=paths.admin_kubeconfig,
        api_server=controlplane.API_SERVER,
        node_name=NODE_NAME,
        bridge_gateway=BRIDGE_GATEWAY,
        version=K8S_VERSION,
        bin_dir=bin_dir,
        kubectl=bin_dir / "kubectl",
        state_dir=paths.root,
        project_image=PROJECT_IMAGE,
    )


def ensure_packages(progress: Progress = print) -> None:
    """apt-get install whatever Debian package is missing (no-op when all are there)."""
    missing = {pkg for exe, pkg in PACKAGES.items() if shutil.which(exe) is None}
    if not (node.CNI_BIN_DIR / "bridge").exists():
        missing.add(_CNI_PACKAGE)
    if not missing:
        return
    progress(f"packages: apt-get install {' '.join(sorted(missing))}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", *sorted(missing)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def ensure_up(paths: Paths | None = None, progress: Progress = print) -> ClusterInfo:
    """Start every missing piece and wait until the node is Ready; returns how to reach it."""
    paths = paths or Paths()
    start = time.monotonic()

    def step(msg: str) -> None:
        progress(f"[{time.monotonic() - start:5.1f}s] {msg}")

    ensure_packages(step)
    bin_dir = build.ensure_binaries(progress=step)
    for d in (paths.root, paths.run, paths.logs):
        d.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o700)
    if not network.bridge_exists():
        (paths.run / "bridge-created").write_text("1\n")
    network.ensure_bridge()
    network.ensure_guards()
    pki = controlplane.ensure_pki(paths)
    step("etcd")
    etcd.start(paths)
    step("kube-apiserver")
    controlplane.start_apiserver(paths, bin_dir, pki)
    step("kube-controller-manager, kube-scheduler")
    controlplane.start_controller_manager(paths, bin_dir, pki)
    controlplane.start_scheduler(paths, bin_dir, pki)
    # kube-proxy starts before the kubelet; it syncs once the kubelet has registered the Node.
    # Until then the guard rules reject ClusterIP traffic instead of letting it leave.
    step("kube-proxy")
    node.start_kube_proxy(paths, bin_dir, pki)
    step("containerd")
    node.start_containerd(paths)
    images.ensure_pause_image(paths, step)
    step("kubelet")
    node.start_kubelet(paths, bin_dir, pki)
    node.wait_kube_proxy(paths)
    step("kube-proxy rules synced; waiting for node Ready")
    procs.wait_for("node Ready", lambda: api.node_ready(paths), 120, paths.log("kubelet"))
    controlplane.wait_controllers(paths, pki)
    procs.wait_for(
        "default service account",
        lambda: api.default_service_account(paths),
        60,
        paths.log("kube-controller-manager"),
    )
    step(f"cluster up: node {NODE_NAME} Ready; KUBECONFIG={paths.admin_kubeconfig}")
    return info(paths)


def load_image(
    paths: Paths | None = None,
    context: Path | None = None,
    progress: Progress = print,
    force: bool = False,
) -> str:
    """Build the project image (cached by input hash) and import it into the node."""
    paths = paths or Paths()
    if procs.running_pid(paths, "containerd") is None:
        raise RuntimeError("containerd is not running: run `hpc-offload e2e cluster up` first")
    return images.load_project_image(paths, context or images.REPO_ROOT, progress, force)


def _drain_pods(paths: Paths, progress: Progress) -> None:
    """Delete every pod through the API so the kubelet tears sandboxes down (CNI DEL too)."""
    try:
        pods = api.get(paths, "/api/v1/pods")["items"]
    except (requests.RequestException, OSError):
        return
    if not pods:
        return
    progress(f"down: deleting {len(pods)} pod(s)")
    for pod in pods:
        meta = pod["metadata"]
        api.delete(
            paths,
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
            {"gracePeriodSeconds": "0"},
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = node.ctr(paths, "tasks", "ls", "-q", check=False).stdout.split()
        if not listed:
            return
        time.sleep(0.5)


def _kill_tasks(paths: Paths) -> None:
    """Whatever is still running in containerd (kubelet gone): kill and delete it."""
    for task in node.ctr(paths, "tasks", "ls", "-q", check=False).stdout.split():
        node.ctr(paths, "tasks", "kill", "-s", "SIGKILL", task, check=False)
    time.sleep(0.5)
    for task in node.ctr(paths, "tasks", "ls", "-q", check=False).stdout.split():
        node.ctr(paths, "tasks", "delete", "-f", task, check=False)
    for c in node.ctr(paths, "containers", "ls", "-q", check=False).stdout.split():
        node.ctr(paths, "containers", "rm", c, check=False)


def _unmount_under(root: Path) -> None:
    """Unmount everything below `root`, deepest first (the kubelet bind-mounts its root dir)."""
    prefix = str(root)
    for _ in range(3):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            if subprocess.run(["umount", point], capture_output=True).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_cgroups() -> None:
    """Empty `kubepods` cgroups the kubelet created (cgroup v1 and v2 layouts)."""
    for base in Path("/sys/fs/cgroup").glob("**/kubepods*"):
        if not base.is_dir():
            continue
        for d in sorted(base.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()


def _remove_outside_state(paths: Paths) -> None:
    """What the kubelet/CNI/containerd write outside our state dir."""
    for d in (Path("/var/log/pods"), Path("/var/log/containers")):
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree("/var/lib/cni/networks/hpc-offload-e2e", ignore_errors=True)
    results = Path("/var/lib/cni/results")
    for f in results.glob("hpc-offload-e2e-*"):
        f.unlink(missing_ok=True)
    since = paths.root.stat().st_mtime if paths.root.exists() else time.time()
    for ns in Path("/var/run/netns").glob("cni-*"):
        if ns.stat().st_mtime >= since - 1:
            subprocess.run(["umount", str(ns)], capture_output=True)
            ns.unlink(missing_ok=True)


def down(paths: Paths | None = None, progress: Progress = print, keep_bridge: bool = False) -> None:
    """Stop what `up` started, clean its traces on the host and remove the state dir."""
    paths = paths or Paths()
    if procs.running_pid(paths, "kube-apiserver") and procs.running_pid(paths, "kubelet"):
        _drain_pods(paths, progress)
    for name in reversed(COMPONENTS):
        if name == "containerd" and procs.running_pid(paths, name):
            _kill_tasks(paths)
        if procs.stop(paths, name):
            progress(f"down: stopped {name}")
    bin_dir = k8s_bin_dir()
    if (bin_dir / "kube-proxy").exists():
        subprocess.run([str(bin_dir / "kube-proxy"), "--cleanup"], capture_output=True)
    network.remove_guards()
    network.remove_kube_firewall()
    _unmount_under(paths.root)
    _remove_cgroups()
    _remove_outside_state(paths)
    created_bridge = (paths.run / "bridge-created").exists()
    if created_bridge and not keep_bridge:
        network.delete_bridge()
        progress("down: removed bridge")
    shutil.rmtree(paths.root, ignore_errors=True)
    shutil.rmtree(images.BUILDAH_RUNROOT, ignore_errors=True)
    progress(f"down: removed {paths.root}")


def status(paths: Paths | None = None) -> list[tuple[str, str]]:
    """(component, state) rows, ending with the node's readiness."""
    paths = paths or Paths()
    rows = []
    for name in COMPONENTS:
        pid = procs.running_pid(paths, name)
        rows.append((name, f"running (pid {pid})" if pid else "stopped"))
    rows.append(("bridge cni0", f"{BRIDGE_GATEWAY}" if network.bridge_exists() else "absent"))
    try:
        ready = api.node_ready(paths)
        rows.append((f"node {NODE_NAME}", "Ready" if ready else "NotReady"))
    except (requests.RequestException, OSError, KeyError) as exc:
        rows.append((f"node {NODE_NAME}", f"unknown ({type(exc).__name__})"))
    return rows
