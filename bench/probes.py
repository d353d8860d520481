"""What the readiness probe of 100 pods costs the node (issue 14 item 2), per kind of probe.

    python bench/probes.py [--pods 100] [--window 60]

The connector's container is Ready only while its HPC job runs; the webhook gives it a
`tcpSocket` probe on a port the connector opens then (period 5 s, as in webhook/mutation.py).
This bench runs N plain pods (not offloaded: the probe's cost does not depend on what the
container does) on the real local cluster, once per probe kind — none, `tcpSocket` (ours), and
`exec` (the alternative: a command run in the container each period) — and measures, in a
steady window after all N are up: processes forked per second on the node above an idle
baseline measured in the same run (/proc/stat `processes`), and the CPU time the kubelet,
containerd and its shims spent per second (/proc/PID/stat). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import Cluster, forks, until  # noqa: E402 - bench/ is not a package

PORT = 8471
PERIOD = 5
LISTEN = ("import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          f"s.bind(('0.0.0.0', {PORT})); s.listen(64); time.sleep(3600)")
PROBES: dict[str, dict | None] = {
    "none": None,
    "tcpSocket (hpc-offload)": {"tcpSocket": {"port": PORT}},
    "exec": {"exec": {"command": ["true"]}},
}
DAEMONS = ("kubelet", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc")
TICKS = os.sysconf("SC_CLK_TCK")


def daemon_cpu_seconds() -> float:
    """CPU seconds used so far by the kubelet, containerd, its shims and runc (live ones)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name in DAEMONS or name.startswith("containerd-shim"):
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def window(seconds: float) -> tuple[float, float]:
    """(forks/s, daemon CPU s/s) over a window."""
    f0, c0, t0 = forks(), daemon_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return (forks() - f0) / elapsed, (daemon_cpu_seconds() - c0) / elapsed


def run_variant(cluster: Cluster, probe: dict | None, count: int, seconds: float) -> tuple[float, float]:
    ns = f"bench-probes-{uuid.uuid4().hex[:6]}"
    client = cluster.client
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        for i in range(count):
            container = {"name": "main", "image": "hpc-offload:dev", "imagePullPolicy": "Never",
                         "command": ["/opt/hpc-offload/bin/python3", "-c", LISTEN],
                         "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}}}
            if probe:
                container["readinessProbe"] = {**probe, "periodSeconds": PERIOD, "timeoutSeconds": 1,
                                               "failureThreshold": 1}
            cluster.core.create_namespaced_pod(ns, {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i:04d}"},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [container]}})

        def all_up() -> bool:
            pods = cluster.core.list_namespaced_pod(ns).items
            return len(pods) == count and all(
                p.status.container_statuses and p.status.container_statuses[0].ready for p in pods)

        until(f"{count} pods ready", all_up, 900, every=3)
        time.sleep(2 * PERIOD)
        return window(seconds)
    finally:
        cluster.core.delete_namespace(ns)
        until("the pods to go", lambda: ns not in {n.metadata.name for n in cluster.core.list_namespace().items},
              600, every=3, fatal=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of each steady window")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/probes.py needs root (/proc of the kubelet and containerd)")
    cluster = Cluster()
    print(f"bench: idle baseline ({args.window:.0f} s)…", flush=True)
    idle_forks, idle_cpu = window(args.window)
    rows = [(f"{args.pods} pods, probe every {PERIOD} s", "forks/s above idle", "kubelet+containerd CPU, ms/s")]
    rows.append(("(idle node: no pods)", f"({idle_forks:.1f} forks/s)", f"({idle_cpu * 1000:.0f})"))
    for name, probe in PROBES.items():
        print(f"bench: {args.pods} pods, probe {name}…", flush=True)
        forks_s, cpu = run_variant(cluster, probe, args.pods, args.window)
        rows.append((name, f"{forks_s - idle_forks:.1f}", f"{cpu * 1000:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows))


if __name__ == "__main__":
    main()
