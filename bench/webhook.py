"""Admission latency and throughput of the real server, against a no-op baseline.

    python bench/webhook.py [--clients N]... [--requests M] [--rounds R] [--rate R]...

Starts `hpc-offload serve` (gunicorn, TLS, the same options as production) on a loopback
port with a fresh certificate and a policy, then drives it with N keep-alive HTTPS clients
(threads, http.client) sending M admissions of a realistic annotated Job pod, and the same
load on /noop (read the body, answer fixed JSON): the difference is the admission's own cost.
Client and server share the machine, so absolute numbers are pessimistic on small hosts.
Each load opens its N connections once (the kernel spreads them over the workers; both
endpoints then use the same ones) and alternates short /noop and /mutate phases R times, so
the host's drift hits both alike: a row's req/s is the median over rounds, its latencies pool
all rounds, and the ratio is the median of the rounds' ratios. With --rate,
paced rows follow ("load" in admissions/s, 4 connections, open loop): latency at a steady
rate. On a small VM they mostly show its wake-up cost from idle (compare the /noop rows).
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webhook.localserver import LocalServer, make_certs  # noqa: E402

POLICY = """
rules:
  - name: research
    namespaces: [research]
    profiles: [prometheus, eagle]
    maxTime: "2-00:00:00"
    maxGpus: 4
"""


def job_pod() -> dict:
    """A Job controller's pod: env (with valueFrom), resources, volumes, managedFields."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "simulate-", "namespace": "research",
            "labels": {"batch.kubernetes.io/job-name": "simulate", "job-name": "simulate",
                       "batch.kubernetes.io/controller-uid": str(uuid.uuid4())},
            "annotations": {"hpc.offload/backend": "prometheus",
                            "hpc.offload/partition": "plgrid",
                            "hpc.offload/time": "02:00:00",
                            "hpc.offload/logs": "stream"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "simulate",
                                 "uid": str(uuid.uuid4()), "controller": True,
                                 "blockOwnerDeletion": True}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                               "apiVersion": "v1", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {}}}}],
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "default",
            "containers": [{
                "name": "simulate",
                "image": "registry.example.org/science/lammps:2023.08",
                "command": ["lmp", "-in", "in.lj"],
                "args": ["-var", "steps", "100000"],
                "env": [{"name": f"PARAM_{i}", "value": str(i)} for i in range(10)]
                + [{"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok",
                                                                        "key": "token"}}},
                   {"name": "POD_NAME", "valueFrom": {"fieldRef": {
                       "fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "8", "memory": "16Gi"},
                              "limits": {"memory": "16Gi"}},
                "volumeMounts": [{"name": "input", "mountPath": "/input", "readOnly": True},
                                 {"name": "scratch", "mountPath": "/scratch"}],
                "workingDir": "/scratch",
            }],
            "volumes": [{"name": "input", "configMap": {"name": "lammps-input"}},
                        {"name": "scratch", "emptyDir": {}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
        },
    }


def review_body() -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "research", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:job-controller"},
            "object": job_pod(), "oldObject": None, "dryRun": False,
        },
    }).encode()


PACED_CLIENTS = 4


def connect(server: LocalServer, clients: int) -> list[http.client.HTTPSConnection]:
    ctx = ssl.create_default_context(cafile=server.ca)
    return [http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
            for _ in range(clients)]


def drive(conns: list[http.client.HTTPSConnection], path: str, total: int,
          deadline: float, rate: float | None = None) -> tuple[list[float], float]:
    """`total` POSTs over the keep-alive connections, one thread each; (latencies in s, wall
    seconds).

    With `rate`, requests are paced to that many per second over all clients (open loop):
    each latency runs from the request's scheduled time, so a server that falls behind shows
    its queueing delay instead of slowing the client down (no coordinated omission)."""
    clients = len(conns)
    bodies = [review_body() for _ in range(32)]
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client(index: int, n: int) -> None:
        conn = conns[index]
        mine = []
        try:
            for i in range(n):
                if time.monotonic() > deadline:
                    break
                body = bodies[i % len(bodies)]
                start = time.perf_counter()
                if rate is not None:
                    start = began + (i * clients + index) / rate
                    time.sleep(max(0.0, start - time.perf_counter()))
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                mine.append(time.perf_counter() - start)
                if resp.status != 200:
                    errors.append(f"{path}: HTTP {resp.status} {data[:200]!r}")
                    break
        finally:
            with lock:
                latencies.extend(mine)

    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(i, n)) for i, n in enumerate(shares)]
    start = time.perf_counter()
    began = start + 0.01  # the first paced request's time
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(errors[0])
    return latencies, wall


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, action="append",
                        help="concurrent clients (repeatable; default 1 and 4)")
    parser.add_argument("--requests", type=int, default=400,
                        help="per endpoint, load and round")
    parser.add_argument("--rounds", type=int, default=15, help="per load (median taken)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rate", type=float, action="append",
                        help="add paced rows: admissions per second over 4 clients, open loop "
                        "(repeatable; e.g. 50 and 200, a busy cluster's pod creation rate)")
    parser.add_argument("--paced-seconds", type=float, default=5.0, help="per paced row")
    parser.add_argument("--time-limit", type=float, default=180.0, help="seconds, overall")
    args = parser.parse_args()
    loads = args.clients or [1, 4]
    deadline = time.monotonic() + args.time_limit

    with tempfile.TemporaryDirectory(prefix="hpc-offload-bench-") as tmp:
        root = Path(tmp)
        (root / "policy.yaml").write_text(POLICY)
        certs = make_certs(root / "certs")
        server = LocalServer(certs, root / "server.log", workers=args.workers,
                             threads=args.threads, policy=root / "policy.yaml")
        with server:
            # Sanity: a real mutation, then warm both paths (imports, caches, TLS sessions).
            check = json.loads(_post(server, "/mutate"))
            assert check["response"]["allowed"] and check["response"].get("patch"), check
            warm = connect(server, 2)
            for path in ("/noop", "/mutate"):
                drive(warm, path, 200, deadline)
            for conn in warm:
                conn.close()

            print(f"hpc-offload webhook bench: gunicorn {args.workers} workers x "
                  f"{args.threads} threads, TLS, {len(review_body())} B AdmissionReview, "
                  f"{args.rounds} rounds of {args.requests} requests per row")
            header = f"{'endpoint':<9}{'load':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}" \
                     f"{'max ms':>9}"
            print(header)
            print("-" * len(header))
            ratios = []
            for clients in loads:
                rates: dict[str, list[float]] = {"/noop": [], "/mutate": []}
                pooled: dict[str, list[float]] = {"/noop": [], "/mutate": []}
                conns = connect(server, clients)  # the same ones for both: a paired comparison
                drive(conns, "/noop", 20 * clients, deadline)  # TLS handshakes out of the way
                for _ in range(args.rounds):
                    for path in ("/noop", "/mutate"):
                        lat, wall = drive(conns, path, args.requests, deadline)
                        rates[path].append(len(lat) / wall)
                        pooled[path] += lat
                for conn in conns:
                    conn.close()
                for path, lat in pooled.items():
                    print(f"{path:<9}{clients:>8}{statistics.median(rates[path]):>9.0f}"
                          f"{pct(lat, 50) * 1e3:>9.2f}{pct(lat, 99) * 1e3:>9.2f}"
                          f"{max(lat) * 1e3:>9.2f}")
                ratios.append((clients, statistics.median(
                    m / n for m, n in zip(rates["/mutate"], rates["/noop"], strict=True))))
            for rate in args.rate or []:
                for path in ("/noop", "/mutate"):
                    conns = connect(server, PACED_CLIENTS)
                    drive(conns, path, 4 * PACED_CLIENTS, deadline)
                    lat, wall = drive(conns, path, max(1, int(rate * args.paced_seconds)),
                                      deadline, rate)
                    for conn in conns:
                        conn.close()
                    print(f"{path:<9}{f'{rate:.0f}/s':>8}{len(lat) / wall:>9.0f}"
                          f"{pct(lat, 50) * 1e3:>9.2f}{pct(lat, 99) * 1e3:>9.2f}"
                          f"{max(lat) * 1e3:>9.2f}")
            print()
            for clients, ratio in ratios:
                print(f"/mutate throughput at {clients} client(s): {ratio:.0%} of /noop "
                      "(median of the rounds)")
            if time.monotonic() > deadline:
                print("time limit reached: rows are partial")
    return 0


def _post(server: LocalServer, path: str) -> bytes:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                       context=ssl.create_default_context(cafile=server.ca))
    try:
        conn.request("POST", path, review_body(), {"Content-Type": "application/json"})
        return conn.getresponse().read()
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
