"""What N offloaded pods cost the HPC side, direct vs through the relay (issue 11).

    python bench/scale.py [--pods 100] [--window 60] [--storms 5] [--jobs 1000] [--only cluster|load]

Part 1, the real local cluster (hpc-offload installed by the dev overlay, the testbed on
10.88.0.1): N pods that sleep, first with a profile saying `relay: off` (direct), then
`relay: required`, in the same run. Two run and N-2 wait (the testbed node is set to 2 CPUs for
this part), as in the issue's measurement. For each mode, in a steady window: SSH sessions of the HPC user,
forks/s on this machine above an idle baseline measured in the same run (/proc/stat
`processes`), slurmctld RPCs/s (`sdiag`, the HPC user's and all), the pods' memory (PSS of
every process in their connector containers), create → all N in the queue, delete → all N
gone, orphans; relay mode repeats the delete storm `--storms` times.

Part 2, no Kubernetes: `--jobs` jobs through one relay (`relay.local`, static tokens) driven
by a load generator that speaks the connectors' protocol (session, find, submit, long polls,
cancel), against the testbed SLURM over-subscribed for the run (64 CPUs x 16 jobs, restored
afterwards) so the jobs run. Steady window: SSH sessions, forks/s, status requests per period,
output read commands per tick, the relay's RSS; then one delete storm.

The machine is shared (login node = compute node = this host): the baseline is measured in the
same run, and other people's work on it shows as noise. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
if TYPE_CHECKING:
    from relay.local import RelayProcess

HPC_USER = "hpcuser"
SSH_PORT = 2222
PERIOD = 30  # the monitoring period of the measurement
QUEUE_TIMEOUT = 1800.0  # seconds for N pods' jobs to reach the queue (direct mode on a busy 2-core host)
SLEEP = "1800"
WAIT_SECONDS = 20.0  # the relay's long poll (relay.protocol.WAIT_SECONDS)
LATE = 10.0  # a long poll answered this long after the relay's wait is late
# how long a connector waits for each answer (connector/backends/relay.py): a submission waits
# its turn on the session's thread (a burst of N: N sbatch one after another)
ROUTE_TIMEOUTS = {"session": 60.0, "find": 120.0, "submit": 300.0, "wait": 90.0, "status": 60.0, "cancel": 30.0,
                  "release": 60.0}


# --- what the machine says ------------------------------------------------------------------

def forks() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("processes "):
            return int(line.split()[1])
    return 0


def sshd_sessions(user: str = HPC_USER) -> int:
    """sshd processes running as the HPC user: one per SSH connection (privilege separation)."""
    uid = pwd.getpwnam(user).pw_uid
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                mine = os.stat(f"/proc/{entry}").st_uid == uid
                if mine and Path(f"/proc/{entry}/comm").read_text().strip() == "sshd":
                    count += 1
            except OSError:
                continue
    return count


def ssh_masters(marker: bytes) -> int:
    """OpenSSH master connections whose control socket path holds `marker`: the connectors'
    own (direct mode: their state dir) or the relay's (its state dir). Other people's work on
    this shared machine does not count here, unlike in the sshd and forks counts."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            cmdline = _cmdline(entry)
            if b"ControlMaster=yes" in cmdline and marker in cmdline:
                count += 1
    return count


def ssh_connections() -> int:
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{SSH_PORT} )"],
                         capture_output=True, text=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def rpcs() -> tuple[int, int]:
    """(the HPC user's, everyone's) RPC counts since sdiag's last reset."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True).stdout
    part = out.split("Remote Procedure Call statistics by user", 1)[-1]
    users = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*(\S+)\s*\(\s*\d+\)\s*count:(\d+)", part, re.M)}
    return users.get(HPC_USER, 0), sum(users.values())


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pod_processes(uids: set[str]) -> dict[str, list[int]]:
    """uid → pids of the pod's containers (not the pause process), from /proc/*/cgroup."""
    marks = {uid: (f"pod{uid}", f"pod{uid.replace('-', '_')}") for uid in uids}
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cgroup = Path(f"/proc/{entry}/cgroup").read_text()
            if "kubepods" not in cgroup or Path(f"/proc/{entry}/comm").read_text().strip() == "pause":
                continue
        except OSError:
            continue
        for uid, names in marks.items():
            if any(name in cgroup for name in names):
                found.setdefault(uid, []).append(int(entry))
    return found


def slurm_jobs(names: set[str], field: str = "%T") -> dict[str, str]:
    """job name → state (or another squeue `field`, "%i" the id) for the jobs of these names
    still in the queue (pending or running)."""
    out = subprocess.run(["squeue", "-h", "-u", HPC_USER, "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING",
                          "-o", f"%j|{field}"], capture_output=True, text=True).stdout
    jobs = {}
    for line in out.splitlines():
        name, _, value = line.partition("|")
        if name in names:
            jobs[name] = value
    return jobs


def until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.5, fatal: bool = True) -> float | None:
    """Seconds until check() holds; None (or SystemExit when fatal) after timeout."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            if fatal:
                raise SystemExit(f"bench: timed out waiting for {what}")
            print(f"bench: {what}: not within {timeout:.0f} s", flush=True)
            return None
        time.sleep(every)
    return time.monotonic() - started


@dataclass
class Window:
    """Counters over a steady window."""

    seconds: float
    forks: float
    ssh_sessions: int
    ssh_connections: int
    rpcs_user: float
    rpcs_all: float
    masters: int = 0


def measure(seconds: float, marker: bytes = b"\0") -> Window:
    f0, (u0, a0), t0 = forks(), rpcs(), time.monotonic()
    sessions: list[int] = []
    connections: list[int] = []
    masters: list[int] = []
    while time.monotonic() - t0 < seconds:
        sessions.append(sshd_sessions())
        connections.append(ssh_connections())
        masters.append(ssh_masters(marker))
        time.sleep(min(5.0, seconds / 6))
    elapsed = time.monotonic() - t0
    f1, (u1, a1) = forks(), rpcs()
    return Window(elapsed, (f1 - f0) / elapsed, max(sessions), max(connections), (u1 - u0) / elapsed,
                  (a1 - a0) / elapsed, max(masters))


# --- part 1: the cluster ----------------------------------------------------------------------

@dataclass
class ModeResult:
    mode: str
    window: Window | None = None
    baseline_forks: float = 0.0
    pss_mib: float = 0.0
    rss_connector_mib: float = 0.0
    queued_s: float | None = 0.0
    queued: int = 0  # jobs in the queue when the window was measured (all N, unless too slow)
    gone_s: list[float | None] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)
    status_per_period: float | None = None
    kubelet_floor_s: list[float | None] = field(default_factory=list)  # plain pods, same storm size


PLAIN_POD = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"  # ends at once on SIGTERM


class Cluster:
    def __init__(self) -> None:
        from kubernetes import client, config

        from e2e.cluster import info
        from e2e.kube import Kubectl

        self.info = info()
        self.core = client.CoreV1Api(config.new_client_from_config(config_file=str(self.info.kubeconfig)))
        self.kubectl = Kubectl(self.info)
        self.client = client

    def namespace(self, mode: str) -> str:
        from e2e.kube import apply_profile

        name = f"bench-scale-{mode}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(self.client.V1Namespace(metadata=self.client.V1ObjectMeta(name=name)))
        apply_profile(self.kubectl, name, "slurm-ssh", "testbed", self.info.bridge_gateway,
                      relay="required" if mode == "relay" else "off")
        # the monitoring period (the testbed profile's is 2 s, for tests)
        self.kubectl("-n", name, "patch", "configmap", "testbed", "--type=merge",
                     "-p", json.dumps({"data": {"monitoring_period": str(PERIOD)}}))
        return name

    def create(self, ns: str, count: int) -> dict[str, str]:
        """count sleeping pods; pod name → uid."""
        pods = {}
        for i in range(count):
            body = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"p{i:04d}", "annotations": {"hpc.offload/backend": "testbed"}},
                    "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 60,
                             "containers": [{"name": "main", "image": "busybox", "command": ["sleep", SLEEP]}]}}
            created = self.core.create_namespaced_pod(ns, body)
            pods[created.metadata.name] = created.metadata.uid
        return pods

    def delete_all(self, ns: str) -> None:
        self.core.delete_collection_namespaced_pod(ns)

    def kubelet_floor(self, count: int) -> float | None:
        """Seconds from deleting `count` plain pods (no offload, they exit at once on SIGTERM)
        until all their processes are gone: what this node's kubelet takes to stop that many
        pods, the floor under any "delete -> job gone" time."""
        ns = f"bench-scale-kubelet-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(self.client.V1Namespace(metadata=self.client.V1ObjectMeta(name=ns)))
        try:
            uids = set()
            for i in range(count):
                body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"plain{i:04d}"},
                        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 60,
                                 "containers": [{"name": "main", "image": "hpc-offload:dev",
                                                 "imagePullPolicy": "IfNotPresent",
                                                 "command": ["sh", "-c", PLAIN_POD]}]}}
                uids.add(self.core.create_namespaced_pod(ns, body).metadata.uid)
            until(f"{count} plain pods running", lambda: sum(
                1 for p in self.core.list_namespaced_pod(ns).items if p.status.phase == "Running") == count, 900)
            time.sleep(10)
            pids = [pid for pids in pod_processes(uids).values() for pid in pids]
            started = time.monotonic()  # from the delete request, as the storms measure
            self.delete_all(ns)
            stopped = until("the plain pods to stop", lambda: not any(os.path.exists(f"/proc/{p}") for p in pids),
                            300, every=0.1, fatal=False)
            return None if stopped is None else time.monotonic() - started
        finally:
            self.core.delete_namespace(ns)

    def pods_left(self, ns: str) -> int:
        return len(self.core.list_namespaced_pod(ns).items)

    def relay_metric(self, name: str) -> float:
        pods = self.core.list_namespaced_pod("hpc-offload", label_selector="app.kubernetes.io/name=hpc-offload-relay")
        running = [p for p in pods.items if p.status.phase == "Running"]
        if not running:
            return 0.0
        text = self.core.connect_get_namespaced_pod_proxy_with_path(f"https:{running[0].metadata.name}:8443",
                                                                    "hpc-offload", "metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


def storm(cluster: Cluster, ns: str, count: int, result: ModeResult, measure_window: float | None,
          baseline: float) -> None:
    started = time.monotonic()
    pods = cluster.create(ns, count)
    names = {f"hpco-{uid}" for uid in pods.values()}
    queued = until(f"{count} jobs in the queue", lambda: len(slurm_jobs(names)) == count, QUEUE_TIMEOUT,
                   every=2, fatal=False)
    if measure_window:  # from the first pod created
        result.queued_s = round(time.monotonic() - started, 1) if queued is not None else None
        result.queued = len(slurm_jobs(names))
    if measure_window:
        time.sleep(20)  # settle: every connector past its submission
        asked0 = cluster.relay_metric("hpc_offload_relay_status_requests")
        marker = b"/run/hpc-offload-relay" if result.mode == "relay" else b"/var/run/hpc-offload/state"
        result.window = measure(measure_window, marker)
        asked1 = cluster.relay_metric("hpc_offload_relay_status_requests")
        result.baseline_forks = baseline
        if result.mode == "relay":
            result.status_per_period = round((asked1 - asked0) / (result.window.seconds / PERIOD), 2)
        procs = pod_processes(set(pods.values()))
        result.pss_mib = round(sum(pss_kb(pid) for pids in procs.values() for pid in pids) / 1024, 1)
        connectors = [rss_kb(pid) for pids in procs.values() for pid in pids
                      if b"connector.cli" in _cmdline(str(pid))]  # a process may have ended since
        result.rss_connector_mib = round(statistics.mean(connectors) / 1024, 1) if connectors else 0.0
    deleted = time.monotonic()  # from the delete request (the API server takes seconds to mark 100 pods)
    cluster.delete_all(ns)
    gone = until("the jobs to leave the queue", lambda: not slurm_jobs(names), 900, every=0.2, fatal=False)
    result.gone_s.append(round(time.monotonic() - deleted, 1) if gone is not None else None)
    until("the pods to go", lambda: cluster.pods_left(ns) == 0, 600, fatal=False)
    time.sleep(5)
    result.orphans.append(len(slurm_jobs(names)))


def cluster_part(args: argparse.Namespace) -> list[ModeResult]:
    cluster = Cluster()
    print(f"bench: idle baseline ({args.window:.0f} s)…", flush=True)
    baseline = measure(args.window).forks
    results = []
    for mode in args.modes.split(","):
        ns = cluster.namespace(mode)
        result = ModeResult(mode)
        try:
            rounds = args.storms if mode == "relay" else 1
            for i in range(rounds):
                print(f"bench: {mode}: {args.pods} pods, round {i + 1}/{rounds}…", flush=True)
                storm(cluster, ns, args.pods, result, args.window if i == 0 else None, baseline)
        finally:
            cluster.core.delete_namespace(ns)
        results.append(result)
    print(f"bench: kubelet alone: {args.pods} plain pods deleted…", flush=True)
    floor = cluster.kubelet_floor(args.pods)
    for result in results:
        result.kubelet_floor_s.append(round(floor, 1) if floor is not None else None)
    return results


# --- part 2: a thousand jobs through one relay -------------------------------------------------

@contextlib.contextmanager
def oversubscribed(spec: str) -> Iterator[None]:
    from testbed import api as testbed
    from testbed import slurm

    if spec == "none":  # the testbed as it is (layout.SLOTS CPUs)
        yield
        return
    os.environ[slurm.OVERSUBSCRIBE_ENV] = spec
    testbed.ensure_up()
    try:
        yield
    finally:
        os.environ.pop(slurm.OVERSUBSCRIBE_ENV, None)
        testbed.ensure_up()


@contextlib.contextmanager
def started_relay(relay: RelayProcess, names: set[str]) -> Iterator[None]:
    """The relay for the run; whatever ends the run, no relay keeps submitting afterwards and
    no job of the run stays in the queue (an interrupted run left 800 running)."""
    relay.start()
    try:
        yield
    finally:
        relay.stop()
        leftovers = slurm_jobs(names, "%i")
        if leftovers:
            subprocess.run(["scancel", *leftovers.values()], check=False)


class LoadGenerator:
    """N connectors in one process: the protocol of connector/backends/relay.py, async."""

    def __init__(self, relay: object, profile_dir: Path, tokens: list[tuple[str, Path]]) -> None:
        from relay.protocol import b64, profile_files

        self.relay = relay
        self.files = {k: b64(v) for k, v in profile_files(profile_dir).items()}
        self.profile_name = profile_dir.name
        self.tokens = [(uid, path.read_text().strip()) for uid, path in tokens]
        self.stop = asyncio.Event()
        self.job_ids: dict[str, str] = {}
        self.ended: set[str] = set()
        self.errors: list[str] = []
        self.polls = 0
        self.polls_late: list[float] = []  # seconds a long poll took beyond the relay's wait + LATE

    async def post(self, session: object, token: str, path: str, body: dict) -> dict:
        import aiohttp

        route = path.rsplit("/", 1)[-1]
        timeout = aiohttp.ClientTimeout(total=None, sock_read=ROUTE_TIMEOUTS.get(route, 120.0))
        try:
            async with session.post(self.relay.url + path, json=body, timeout=timeout,  # type: ignore[attr-defined]
                                    headers={"Authorization": f"Bearer {token}"}) as response:
                data = await response.json(content_type=None)
                if response.status not in (200, 202):
                    raise RuntimeError(f"{route}: HTTP {response.status} {data}")
                return data  # type: ignore[no-any-return]
        except (TimeoutError, OSError) as exc:  # which route timed out, not just "TimeoutError"
            raise RuntimeError(f"{route}: {type(exc).__name__} {exc}") from exc

    async def poll(self, session: object, token: str, path: str, body: dict) -> dict:
        """One long poll, timed: the relay answers within its wait (20 s), news or not; later
        means its loop or its session thread kept the answer back."""
        started = time.monotonic()
        answer = await self.post(session, token, path, body)
        took = time.monotonic() - started
        self.polls += 1
        if took > WAIT_SECONDS + LATE:
            self.polls_late.append(took)
        return answer

    async def connector(self, session: object, uid: str, token: str, workdir: str) -> None:
        sid = (await self.post(session, token, "/v1/session", {"name": self.profile_name, "files": self.files}))[
            "session"]
        spec = {"command": ["bash", "-c", f"echo started; sleep {SLEEP}"], "runtime": "none",
                "pod": {"namespace": "bench", "name": uid[:8], "uid": uid}}
        request = {"spec": spec, "job_dir": f"{workdir}/hpco-{uid}", "env": {}, "run": 0}
        base = f"/v1/session/{sid}"
        found = await self.post(session, token, base + "/find", {"request": request, "period": PERIOD})
        if found.get("handle") is None:
            found = await self.post(session, token, base + "/submit", {"request": request, "period": PERIOD})
        job = found["handle"]["job_id"]
        self.job_ids[uid] = job
        offsets = {"stdout_offset": 0, "stderr_offset": 0}
        version = 0
        stopped = asyncio.create_task(self.stop.wait())
        while not self.stop.is_set():
            poll = asyncio.create_task(self.poll(session, token, f"{base}/job/{job}/wait",
                                                 {**offsets, "marker": True, "version": version}))
            await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not poll.done():  # SIGTERM cuts a real connector's long poll short too
                poll.cancel()
                break
            answer = poll.result()
            version = answer.get("version", version)
            progress = answer.get("progress") or {}
            offsets["stdout_offset"] += len(_unb64(progress.get("stdout")))
            offsets["stderr_offset"] += len(_unb64(progress.get("stderr")))
            status = answer.get("status") or {}
            if status.get("state") not in (None, "PENDING", "RUNNING"):
                self.ended.add(uid)
                return
        await self.post(session, token, f"{base}/job/{job}/cancel", {})  # as SIGTERM makes it do
        while True:
            answer = await self.post(session, token, f"{base}/job/{job}/status",
                                     {"version": version, "until_ended": True})
            version = answer.get("version", version)
            if (answer.get("status") or {}).get("state") not in (None, "PENDING", "RUNNING"):
                break
        await self.post(session, token, f"{base}/job/{job}/release", {})
        self.ended.add(uid)

    async def run(self, workdir: str, measure_at: Callable[[], None]) -> None:
        import ssl

        import aiohttp

        context = ssl.create_default_context(cafile=str(self.relay.ca_file))  # type: ignore[attr-defined]
        connector = aiohttp.TCPConnector(limit=0, ssl=context)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)  # each route: ROUTE_TIMEOUTS
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [asyncio.create_task(self._guard(self.connector(session, uid, token, workdir)))
                     for uid, token in self.tokens]
            await asyncio.get_running_loop().run_in_executor(None, measure_at)
            self.stop.set()
            await asyncio.gather(*tasks)

    async def _guard(self, work: object) -> None:
        try:
            await work  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
            self.errors.append(f"{type(exc).__name__}: {exc}"[:200])


def _unb64(text: object) -> bytes:
    import base64

    return base64.b64decode(text) if isinstance(text, str) and text else b""


@dataclass
class LoadResult:
    jobs: int
    baseline_forks: float = 0.0
    window: Window | None = None
    queued_s: float = 0.0
    running: int = 0
    gone_s: float = 0.0
    orphans: int = 0
    relay_rss_mib: float = 0.0
    ssh_pss_mib: float = 0.0
    commands_per_s: float = 0.0
    scheduler_calls_per_s: float = 0.0
    status_per_period: float = 0.0
    reads_per_tick: float = 0.0
    errors: int = 0
    polls: int = 0
    polls_late: int = 0  # answered over WAIT_SECONDS + LATE, or never (the generator's read timeout)
    poll_max_s: float = 0.0


def load_part(args: argparse.Namespace) -> LoadResult:
    from relay.local import RelayProcess
    from testbed import profile as testbed_profile

    work = Path(f"/tmp/hpc-offload-bench-scale-{uuid.uuid4().hex[:6]}")
    profile_dir = work / "profile"
    profile_dir.mkdir(parents=True)
    testbed_profile.write_dir(profile_dir, "slurm-ssh", "127.0.0.1")
    conf = json.loads((profile_dir / "configuration").read_text())
    (profile_dir / "configuration").write_text(json.dumps({**conf, "ssh_client": "openssh"}))
    (profile_dir / "monitoring_period").write_text(str(PERIOD))
    relay = RelayProcess(work / "relay")
    tokens = []
    for _ in range(args.jobs):
        uid = str(uuid.uuid4())
        tokens.append((uid, relay.token_for("bench", uid[:8], uid)))
    names = {f"hpco-{uid}" for uid, _ in tokens}
    result = LoadResult(args.jobs)
    print(f"bench: idle baseline ({args.window:.0f} s)…", flush=True)
    result.baseline_forks = measure(args.window).forks
    with oversubscribed(args.oversubscribe), started_relay(relay, names):
        generator = LoadGenerator(relay, profile_dir, tokens)
        started = time.monotonic()

        def steady() -> None:
            # every connector past its submission: the window must not count the burst's statuses
            until(f"{args.jobs} jobs in the queue", lambda: len(slurm_jobs(names)) == args.jobs
                  and len(generator.job_ids) == args.jobs or len(generator.errors) > args.jobs // 10, 3600, every=2)
            until("every connector answered", lambda: len(generator.job_ids) + len(generator.errors) >= args.jobs,
                  600, every=2, fatal=False)
            result.queued_s = round(time.monotonic() - started, 1)
            if args.oversubscribe != "none":  # CPUSxJOBS: that many run, the rest wait
                cpus, per_cpu = (int(n) for n in args.oversubscribe.split("x"))
                slots = min(args.jobs, cpus * per_cpu)
                until("the jobs running", lambda: list(slurm_jobs(names).values()).count("RUNNING")
                      >= slots * 0.9, 900, every=2)
            time.sleep(30)
            metrics0 = relay.metrics()
            result.window = measure(args.window, str(relay.directory / "state").encode())
            metrics1 = relay.metrics()
            result.running = list(slurm_jobs(names).values()).count("RUNNING")
            asked = metrics1.get("hpc_offload_relay_status_requests", 0) - metrics0.get(
                "hpc_offload_relay_status_requests", 0)
            result.status_per_period = round(asked / (result.window.seconds / PERIOD), 2)
            ticks = metrics1.get("hpc_offload_relay_ticks", 0) - metrics0.get("hpc_offload_relay_ticks", 0)
            reads = metrics1.get("hpc_offload_relay_read_commands", 0) - metrics0.get(
                "hpc_offload_relay_read_commands", 0)
            result.reads_per_tick = round(reads / ticks, 2) if ticks else 0.0
            assert relay.proc is not None
            result.relay_rss_mib = round(rss_kb(relay.proc.pid) / 1024, 1)
            marker = str(relay.directory / "state").encode()
            result.ssh_pss_mib = round(sum(pss_kb(int(p)) for p in os.listdir("/proc") if p.isdigit()
                                           and int(p) != relay.proc.pid and marker in _cmdline(p)) / 1024, 1)
            calls = metrics1.get("hpc_offload_relay_scheduler_calls", 0) - metrics0.get(
                "hpc_offload_relay_scheduler_calls", 0)
            result.scheduler_calls_per_s = round(calls / result.window.seconds, 3)
            trips = metrics1.get("hpc_offload_relay_round_trips", 0) - metrics0.get("hpc_offload_relay_round_trips", 0)
            result.commands_per_s = round(trips / result.window.seconds, 2)
            print("bench: delete storm…", flush=True)
            result.gone_s = time.monotonic()

        asyncio.run(generator.run(conf["workdir"], steady))
        until("the jobs to leave the queue", lambda: not slurm_jobs(names), 900)
        result.gone_s = round(time.monotonic() - result.gone_s, 1)
        time.sleep(5)
        result.orphans = len(slurm_jobs(names))
        result.errors = len(generator.errors)
        result.polls = generator.polls
        late = [e for e in generator.errors if e.startswith("RuntimeError: wait:")]
        result.polls_late = len(generator.polls_late) + len(late)
        result.poll_max_s = round(max(generator.polls_late, default=0.0), 1)
        if generator.errors:
            routes = Counter(error.split(": ")[1] for error in generator.errors if error.count(": ") > 1)
            print("bench: load generator errors by route:", dict(routes), "(first 3):", *generator.errors[:3],
                  sep="\n  ")
    return result


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --- the table --------------------------------------------------------------------------------

def table(modes: list[ModeResult], load: LoadResult | None, pods: int) -> str:
    rows: list[tuple[str, ...]] = []
    if modes:
        rows.append((f"{pods} offloaded pods (period {PERIOD} s)", *(m.mode for m in modes), "target (relay)"))
        w = {m.mode: m.window for m in modes}

        def cell(m: ModeResult, fn: Callable[[Window], object]) -> str:
            return str(fn(m.window)) if m.window else "-"

        rows += [
            ("SSH connections of these pods / the relay", *(cell(m, lambda x: x.masters) for m in modes), "1"),
            ("SSH sessions of the HPC user, machine-wide", *(cell(m, lambda x: x.ssh_sessions) for m in modes), ""),
            ("SSH connections to :2222", *(cell(m, lambda x: x.ssh_connections) for m in modes), "1"),
            ("forks/s above idle", *(cell(m, lambda x, m=m: round(x.forks - m.baseline_forks, 1)) for m in modes),
             "<= 10"),
            ("  (idle baseline forks/s)", *(str(round(m.baseline_forks, 1)) for m in modes), ""),
            ("slurmctld RPCs/s, HPC user", *(cell(m, lambda x: round(x.rpcs_user, 2)) for m in modes), ""),
            ("slurmctld RPCs/s, all users", *(cell(m, lambda x: round(x.rpcs_all, 2)) for m in modes), ""),
            ("relay status requests per period", *(str(m.status_per_period) if m.status_per_period is not None
                                                    else "-" for m in modes), "<= 1"),
            ("memory of all pods (PSS, MiB)", *(str(m.pss_mib) for m in modes), ""),
            ("connector RSS, mean (MiB)", *(str(m.rss_connector_mib) for m in modes), "<= 12"),
            ("create -> all in queue (s)", *(str(m.queued_s) if m.queued_s is not None
                                               else f"> {QUEUE_TIMEOUT:.0f} ({m.queued} queued)" for m in modes), ""),
            ("delete -> all gone (s), per storm", *(", ".join(map(str, m.gone_s)) for m in modes), "<= 10"),
            (f"  kubelet alone: delete -> {pods} plain pods stopped (s)",
             *(", ".join(map(str, m.kubelet_floor_s)) for m in modes), ""),
            ("orphaned jobs, per storm", *(", ".join(map(str, m.orphans)) for m in modes), "0"),
        ]
        del w
    if load is not None and load.window is not None:
        x = load.window
        rows += [
            ("", "", "", ""),
            (f"{load.jobs} jobs through one relay (no Kubernetes)", "relay", "", "target"),
            ("jobs running in the steady window", str(load.running), "", ""),
            ("SSH connections of the relay", str(x.masters), "", "1"),
            ("SSH sessions of the HPC user, machine-wide", str(x.ssh_sessions), "", ""),
            ("relay commands on the login node per s", str(load.commands_per_s), "", ""),
            ("forks/s above idle", str(round(x.forks - load.baseline_forks, 1)), "", "<= 10"),
            ("  (idle baseline forks/s)", str(round(load.baseline_forks, 1)), "", ""),
            ("slurmctld RPCs/s, HPC user (machine-wide)", str(round(x.rpcs_user, 2)), "", ""),
            ("relay's scheduler commands/s", str(load.scheduler_calls_per_s), "", ""),
            ("relay status requests per period", str(load.status_per_period), "", "<= 1"),
            ("relay read commands per tick", str(load.reads_per_tick), "", "<= 1"),
            ("relay RSS (MiB) / PSS of its ssh (MiB)", f"{load.relay_rss_mib} / {load.ssh_pss_mib}", "", "<= 200"),
            ("submit -> all in queue (s)", str(load.queued_s), "", ""),
            ("delete storm -> all gone (s)", str(load.gone_s), "", ""),
            ("orphaned jobs", str(load.orphans), "", "0"),
            (f"long polls late (> {WAIT_SECONDS + LATE:.0f} s or never) / all, slowest (s)",
             f"{load.polls_late} / {load.polls}, {load.poll_max_s}", "", "0"),
            ("load generator errors", str(load.errors), "", "0"),
        ]
    widths = [max(len(r[i]) for r in rows if len(r) > i) for i in range(max(len(r) for r in rows))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of each steady window")
    parser.add_argument("--storms", type=int, default=5, help="delete storms in relay mode")
    parser.add_argument("--modes", default="direct,relay", help="connector modes of part 1, in order")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--oversubscribe", default="64x16",
                        help="testbed CPUsxJOBS for the load part (none: the testbed as it is)")
    parser.add_argument("--only", choices=("cluster", "load"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/scale.py needs root (the testbed, /proc of every process)")
    modes = []
    if args.only != "load":
        with oversubscribed("2x1"):  # two jobs run and the rest wait, as in the measurement
            modes = cluster_part(args)
    if modes:
        print(table(modes, None, args.pods), flush=True)
    load = load_part(args) if args.only != "cluster" else None
    print()
    print(table(modes, load, args.pods))
    if args.json:
        from dataclasses import asdict

        args.json.write_text(json.dumps({"modes": [asdict(m) for m in modes],
                                         "load": asdict(load) if load else None}, indent=1))


if __name__ == "__main__":
    main()
