"""The user-visible latencies on the real path: local cluster + webhook + connector + SLURM.

    python bench/e2e.py [--repeat N]

Needs the local cluster with hpc-offload installed (scripts/demo.sh or the e2e suite leaves it
so) and the testbed listening on 10.88.0.1. For each measure, a baseline run in the same
process: the same pod *without* the annotation (a plain container doing the same), so the
ratio is what offloading adds to what Kubernetes itself costs.

  pod created → sbatch accepted          baseline: pod created → container started
  process end → pod Succeeded            baseline: the same for the plain pod
  kubectl delete → job gone from squeue  baseline: delete → plain pod gone
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

END = "import time; time.sleep(3); print('END', time.time(), flush=True)"
# a process that ends on SIGTERM, as a well-behaved container does (plain `sleep` as PID 1
# ignores it and waits out the grace period)
SERVE = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(600)"


def core_api():
    from kubernetes import client, config

    from e2e.cluster import info

    return client.CoreV1Api(config.new_client_from_config(config_file=str(info().kubeconfig)))


def pod(name: str, command: list[str], offload: bool) -> dict:
    annotations = {"hpc.offload/backend": "testbed"} if offload else {}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "main", "image": "hpc-offload:dev", "imagePullPolicy": "IfNotPresent",
                 "command": command}]}}


def squeue_id(name: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "--states=all", f"--name={name}", "-o", "%i"],
                         capture_output=True, text=True).stdout.split()
    return out[0] if out else None


def queued(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip() in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")


def until(check, timeout: float = 120, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError("timed out")


def started(core, ns: str, name: str, offload: bool) -> float:
    """Seconds from create to: sbatch accepted (offload) / container running (plain)."""
    t0 = time.monotonic()
    core.create_namespaced_pod(ns, pod(name, ["python3", "-c", END], offload))
    if offload:
        uid = core.read_namespaced_pod(name, ns).metadata.uid
        until(lambda: squeue_id(f"hpco-{uid}"))
    else:
        until(lambda: (core.read_namespaced_pod(name, ns).status.container_statuses or [None])[0]
              and core.read_namespaced_pod(name, ns).status.container_statuses[0].state.running)
    return time.monotonic() - t0


def ended(core, ns: str, name: str) -> float:
    """Wall seconds from the process's END stamp to the pod phase Succeeded."""
    until(lambda: core.read_namespaced_pod(name, ns).status.phase == "Succeeded", every=0.02)
    now = time.time()
    line = next(x for x in core.read_namespaced_pod_log(name, ns).splitlines() if x.startswith("END"))
    return now - float(line.split()[1])


def deleted(core, ns: str, name: str, offload: bool) -> float:
    core.create_namespaced_pod(ns, pod(name, ["python3", "-c", SERVE], offload))
    if offload:
        uid = core.read_namespaced_pod(name, ns).metadata.uid
        job_id = until(lambda: squeue_id(f"hpco-{uid}"))
        until(lambda: subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                                     text=True).stdout.strip() == "RUNNING")
        time.sleep(1)  # the connector has seen it running
    else:
        until(lambda: core.read_namespaced_pod(name, ns).status.phase == "Running")
    t0 = time.monotonic()
    core.delete_namespaced_pod(name, ns)
    if offload:
        until(lambda: not queued(job_id))
    else:
        def gone() -> bool:
            try:
                core.read_namespaced_pod(name, ns)
                return False
            except Exception:
                return True
        until(gone, every=0.02)
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    core = core_api()
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    until(lambda: core.list_namespaced_service_account(ns).items, every=0.1)
    profile = subprocess.run([sys.executable, "-m", "hpc_cli.main", "testbed", "profile", "slurm-ssh",
                              "--name", "testbed", "--host", "10.88.0.1"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout
    from e2e.cluster import info

    subprocess.run([str(info().kubectl), f"--kubeconfig={info().kubeconfig}", "apply", "-n", ns, "-f", "-"],
                   input=profile, text=True, check=True, capture_output=True)
    results: dict[str, list[float]] = {}
    try:
        for i in range(args.repeat):
            for offload in (True, False):
                tag = "hpc" if offload else "plain"
                name = f"{tag}-{i}"
                results.setdefault(f"start {tag}", []).append(started(core, ns, name, offload))
                results.setdefault(f"end {tag}", []).append(ended(core, ns, name))
                results.setdefault(f"delete {tag}", []).append(deleted(core, ns, f"{tag}-d{i}", offload))
    finally:
        core.delete_namespace(ns)
    rows = [("pod created → sbatch accepted (baseline: → container running)", "start", "≤ 1.5 s"),
            ("HPC job ended → pod Succeeded (baseline: process end → Succeeded)", "end", "≤ 2 s"),
            ("kubectl delete → job gone from squeue (baseline: → pod gone)", "delete", "≤ 1 s")]
    print(f"| measure (median of {args.repeat}) | offloaded | plain pod | ratio | target |")
    print("|---|---|---|---|---|")
    for label, key, target in rows:
        hpc, plain = statistics.median(results[f"{key} hpc"]), statistics.median(results[f"{key} plain"])
        print(f"| {label} | {hpc:.2f} s | {plain:.2f} s | {hpc / plain:.2f}x | {target} |")


if __name__ == "__main__":
    main()
