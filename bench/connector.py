"""Connector benchmark against the real SLURM testbed (not a test: numbers, not asserts).

    python bench/connector.py [--repeat N]

Measures, for slurm-ssh and slurm-local, each against a baseline run in the same process
(and, with `--rest`, the three latencies of slurm-rest, whose baseline is not a shell command):
  * start → sbatch accepted         baseline: one bare `sbatch` (ssh: connect + sbatch, paramiko)
  * job end → connector exit        baseline: the paper's mode (verbatim script, end seen only at
                                    the monitoring period of 2 s)
  * SIGINT → job gone from squeue   baseline: a bare `scancel`, then polling squeue
  * peak RSS of the connector       baseline: `python3 -c pass` (openssh: also the PSS sum with its ssh processes)
  * scheduler calls and SSH round trips per monitoring period while a job runs
Needs root and the testbed (`hpc-offload testbed up`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PERIOD = 2.0


class Proc:
    """A connector subprocess; stderr lines are timestamped as they arrive."""

    def __init__(self, argv: list[str], env: dict[str, str], helpers: str | None = None) -> None:
        self.started = time.monotonic()
        self.helpers = helpers  # a path in the cmdline of its helper processes (ssh master)
        self.peak_with_helpers_kib = 0
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.events: list[tuple[float, str]] = []
        self.out: list[tuple[float, str]] = []
        self.peak_kib = 0
        threading.Thread(target=self._sample_rss, daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.events), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True).start()

    @staticmethod
    def _read(stream, sink) -> None:
        for raw in iter(stream.readline, b""):
            sink.append((time.monotonic(), raw.decode("utf-8", "replace")))

    def _sample_rss(self) -> None:
        """VmHWM (the kernel's peak RSS of this process), sampled until it exits. rusage of a
        child would count the pages it shared with this (much larger) process before exec."""
        status = Path(f"/proc/{self.proc.pid}/status")
        while self.proc.returncode is None:
            try:
                text = status.read_text()
            except OSError:
                return
            match = re.search(r"VmHWM:\s+(\d+)", text)
            if match and "python" in Path(f"/proc/{self.proc.pid}/cmdline").read_text():
                self.peak_kib = max(self.peak_kib, int(match.group(1)))
                if self.helpers:  # proportional set sizes: shared library pages counted once
                    pids = [self.proc.pid, *(pid for pid in _pids_with(self.helpers) if pid != self.proc.pid)]
                    now = sum(_pss_kib(pid) for pid in pids)
                    self.peak_with_helpers_kib = max(self.peak_with_helpers_kib, now)
            time.sleep(0.005)

    def when(self, text: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in self.events:
                if text in line:
                    return at
            time.sleep(0.002)
        raise RuntimeError(f"never saw {text!r}: {''.join(line for _, line in self.events)}")

    def wait(self) -> tuple[int, float, int]:
        """Exit code, exit time and the peak RSS in KiB."""
        code = self.proc.wait()
        ended = time.monotonic()
        time.sleep(0.05)
        return code, ended, self.peak_kib


def _pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+)", text, re.M)
    return int(match.group(1)) if match else 0


def _pids_with(text: str) -> list[int]:
    """Processes whose command line mentions text: the connector's detached ssh master."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_text(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def connector(spec: dict, profile: Path, debug: bool = False) -> Proc:
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    spec = {**spec, "pod": {"namespace": "bench", "name": "b", "uid": str(uuid.uuid4())}}
    (work / "job-spec.json").write_text(json.dumps(spec))
    argv = [sys.executable, "-m", "connector.cli", "--log-level", "debug" if debug else "info", "run",
            "--spec", str(work / "job-spec.json"), "--profile", str(profile),
            "--state-dir", str(work / "state"), "--termination-log", str(work / "term")]
    return Proc(argv, {**os.environ, "USER": os.environ.get("USER", "root")}, helpers=str(work / "state"))


def simulate(script: str, profile_kind: str, profile: Path) -> Proc:
    conf = json.loads((profile / "configuration").read_text())
    for key, name in (("ssh_privatekey_file", "ssh-privatekey"), ("known_hosts_file", "known_hosts")):
        if (profile / name).exists():
            conf[key] = str(profile / name)
    argv = [sys.executable, "-m", "connector.cli", "--backend", profile_kind, "--backend-conf",
            json.dumps(conf), "simulate", "--job-config", json.dumps({"script": script}),
            "--monitoring-period", str(PERIOD)]
    return Proc(argv, {**os.environ, "USER": os.environ.get("USER", "root"),
                       "HPC_OFFLOAD_TERMINATION_LOG": "/dev/null"})


def queued(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
    return job_id in out.stdout.split()


def wait_gone(job_id: str, since: float) -> float:
    while queued(job_id):
        time.sleep(0.005)
    return time.monotonic() - since


def job_id_of(proc: Proc) -> str:
    for _, line in proc.events:
        match = re.search(r"submitted HPC job (\d+)", line)
        if match:
            return match.group(1)
    raise RuntimeError("no job id logged")


# --- measurements -------------------------------------------------------------------------------

def submit_latency(profile: Path) -> tuple[float, int, int]:
    """Seconds to sbatch accepted; peak RSS in KiB of the connector, and of it with its ssh
    master (sampled together)."""
    proc = connector({"command": ["true"], "runtime": "none"}, profile)
    accepted = proc.when("submitted HPC job")
    _, _, rss = proc.wait()
    return accepted - proc.started, rss, proc.peak_with_helpers_kib


def baseline_submit(kind: str) -> float:
    from testbed import api

    started = time.monotonic()
    if kind == "slurm-local":
        subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "true"],
                       capture_output=True, check=True)
    else:
        import paramiko

        info = api.info()
        client = paramiko.SSHClient()
        client.load_host_keys(str(info.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(info.ssh_host, port=info.ssh_port, username=info.ssh_user,
                       key_filename=str(info.key_path), look_for_keys=False, allow_agent=False)
        _, out, _ = client.exec_command("sbatch --parsable --output=/dev/null --wrap true")
        out.channel.recv_exit_status()
        client.close()
    return time.monotonic() - started


END_CODE = "import time; time.sleep(3); print('END', time.time(), flush=True)"


def end_to_exit(profile: Path) -> float:
    proc = connector({"command": ["python3", "-c", END_CODE], "runtime": "none"}, profile)
    _, ended, _ = proc.wait()
    return _end_latency(proc, ended)


def baseline_end_to_exit(kind: str, profile: Path) -> float:
    script = "#!/bin/bash\necho END $(python3 -c 'import time; time.sleep(3); print(time.time())')\n"
    proc = simulate(script, kind, profile)
    proc.wait()
    ended_wall = time.time()
    # simulate does not stream, so read the END stamp from the job's output file
    job_id = job_id_of(proc)
    info = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    out_path = info.split("StdOut=")[1].split()[0]
    stamp = float(Path(out_path).read_text().split("END", 1)[1].split()[0])
    return ended_wall - stamp - 0.05


def _end_latency(proc: Proc, ended_monotonic: float) -> float:
    for at, line in proc.out:
        if line.startswith("END"):
            stamp = float(line.split()[1])
            # convert the job's wall-clock stamp into this process's monotonic clock
            offset = time.time() - time.monotonic()
            return ended_monotonic - (stamp - offset)
    raise RuntimeError("no END line")


def cancel_latency(profile: Path) -> float:
    proc = connector({"command": ["sleep", "300"], "runtime": "none"}, profile)
    proc.when("running")
    job_id = job_id_of(proc)
    sent = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    gone = wait_gone(job_id, sent)
    proc.wait()
    return gone


def baseline_cancel() -> float:
    job_id = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "sleep 300"], capture_output=True,
                            text=True, check=True).stdout.strip()
    while True:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if state == "RUNNING":
            break
        time.sleep(0.05)
    sent = time.monotonic()
    subprocess.run(["scancel", job_id], check=True)
    return wait_gone(job_id, sent)


def load_per_period(profile: Path, seconds: int = 12) -> tuple[float, float]:
    proc = connector({"command": ["bash", "-c", f"for i in $(seq {seconds}); do echo $i; sleep 1; done"],
                      "runtime": "none", "poll_interval": PERIOD}, profile, debug=True)
    rc, _, _ = proc.wait()
    stats = next(line for _, line in proc.events if "stats:" in line)
    values = dict(item.split("=") for item in stats.split("stats:")[1].split())
    periods = seconds / PERIOD
    return int(values["scheduler_calls"]) / periods, int(values["round_trips"]) / periods


def baseline_rss() -> int:
    proc = Proc([sys.executable, "-c", "import time; time.sleep(0.3)"], dict(os.environ))
    return proc.wait()[2]


def row(name: str, value: float, base: float, unit: str, target: str = "") -> str:
    ratio = value / base if base else float("nan")
    return f"| {name} | {value:.3f} {unit} | {base:.3f} {unit} | {ratio:.2f}x | {target} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--rest", action="store_true", help="also slurm-rest (slurmrestd + JWT)")
    args = parser.parse_args()
    from testbed import api, profile

    api.ensure_up()
    base_rss = baseline_rss()
    lines = ["| measure | connector | baseline | ratio | target |", "|---|---|---|---|---|"]
    for label, kind, client in (("slurm-ssh (paramiko)", "slurm-ssh", "paramiko"),
                                ("slurm-ssh (openssh)", "slurm-ssh", "openssh"),
                                ("slurm-local", "slurm-local", None)):
        pdir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        profile.write_dir(pdir, kind, "127.0.0.1")
        if client:
            conf = json.loads((pdir / "configuration").read_text())
            (pdir / "configuration").write_text(json.dumps({**conf, "ssh_client": client}))
        submits = [submit_latency(pdir) for _ in range(args.repeat)]
        submit = statistics.median(s for s, _, _ in submits)
        rss = max(r for _, r, _ in submits)
        rss_with_ssh = max(r for _, _, r in submits)
        base_submit = statistics.median(baseline_submit(kind) for _ in range(args.repeat))
        end = statistics.median(end_to_exit(pdir) for _ in range(args.repeat))
        base_end = statistics.median(baseline_end_to_exit(kind, pdir) for _ in range(args.repeat))
        cancel = statistics.median(cancel_latency(pdir) for _ in range(args.repeat))
        base_cancel = statistics.median(baseline_cancel() for _ in range(args.repeat))
        calls, trips = load_per_period(pdir)
        lines += [
            row(f"{label}: start → sbatch accepted", submit, base_submit, "s", "≤ 1.5 s (pod created →)"),
            row(f"{label}: job end → connector exit", end, base_end, "s", "≤ 2 s (→ pod Succeeded)"),
            row(f"{label}: SIGINT → gone from squeue", cancel, base_cancel, "s", "≤ 1 s"),
            row(f"{label}: peak RSS", rss / 1024, base_rss / 1024, "MiB", "≤ 25 MiB"),
            *([row(f"{label}: peak PSS with its ssh processes", rss_with_ssh / 1024, base_rss / 1024,
                   "MiB", "(the pod's whole share)")] if client == "openssh" else []),
            f"| {label}: slurmctld calls / {PERIOD:g} s period | {calls:.2f} | – | – | |",
            f"| {label}: SSH round trips / {PERIOD:g} s period | {trips:.2f} | – | – | |",
        ]
    if args.rest:
        pdir = Path(tempfile.mkdtemp(prefix="bench-slurm-rest-"))
        profile.write_dir(pdir, "slurm-rest", "127.0.0.1")
        measures = (("start → /job/submit answered", lambda: submit_latency(pdir)[0]),
                    ("job end → connector exit", lambda: end_to_exit(pdir)),
                    ("SIGINT → gone from squeue", lambda: cancel_latency(pdir)))
        for name, measure in measures:
            value = statistics.median(measure() for _ in range(args.repeat))
            lines.append(f"| slurm-rest: {name} | {value:.3f} s | – | – | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
