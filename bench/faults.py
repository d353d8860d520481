"""Faults under the relay (issue 11, item 5): jobs followed to their end, none submitted twice.

    python bench/faults.py [--jobs 50] [--connectors 20] [--kills 100] [--seconds 60]
                           [--only relay|sshd|kills] [--oversubscribe 64x16|none]

Real `hpc-connector run` processes in `relay: required` mode, each with its own pod UID, token
(static, `relay.local`), state dir and job, all through one real relay, against the testbed
SLURM. Every job prints one numbered line a second for `--seconds`, then exits with a code of
its own. Three scenarios:

  relay  `--jobs` jobs; once all run, the relay is SIGKILLed and started again (same port and
         key, as a rescheduled relay pod behind its Service).
  sshd   `--jobs` jobs; once all run, the testbed's sshd and every SSH session are killed
         (the relay's too) and sshd is started again `--sshd-down` seconds later.
  kills  `--connectors` jobs; `--kills` SIGKILLs of a connector picked at random among the
         running ones, at random moments over about the jobs' length, each restarted at once on
         the same state dir (as the kubelet restarts a container), whatever it was doing.

Per scenario: duplicates (SLURM jobs per pod tag beyond one, from squeue's comments), lost
(a connector that did not end with its job's code after its last start, or did not end),
output lines lost / doubled (each connector's stdout over all its starts against the lines its
job printed), and the time from the first connector started to the last one ended.

Fifty jobs at once need more than the testbed's 8 slots: SLURM is over-subscribed for the run
(`--oversubscribe`, rewrites slurm.conf and restarts slurmctld, restored afterwards); `none`
keeps the testbed as it is, for a small run (`--jobs 3 --connectors 3 --kills 5`). The sshd
scenario cuts every SSH session on this machine's testbed: run it on a quiet machine. Needs
root and the testbed. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import REPO, oversubscribed, slurm_jobs, until  # noqa: E402 - bench/ is not a package

SCENARIOS = ("relay", "sshd", "kills")
NAMESPACE = "bench"


@dataclass
class Pod:
    """One offloaded pod's connector: its identity, its files, its current process."""

    index: int
    uid: str
    token: Path
    directory: Path
    seconds: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    ended_at: float | None = None
    stopped: bool = False  # the bench had to stop it: it did not end by itself

    @property
    def tag(self) -> str:
        return f"hpco-{self.uid}"

    @property
    def code(self) -> int:
        """The job's own exit code: distinct per pod, none of the connector's own codes."""
        return 10 + self.index % 50

    def expected_lines(self) -> list[str]:
        return [f"f{self.index} line {j}" for j in range(1, self.seconds + 1)]

    def spec(self) -> dict[str, object]:
        script = f"for j in $(seq 1 {self.seconds}); do echo f{self.index} line $j; sleep 1; done; exit {self.code}"
        return {"command": ["bash", "-c", script], "runtime": "none",
                "pod": {"namespace": NAMESPACE, "name": f"f{self.index}", "uid": self.uid}}

    def launch(self, profile: Path, env: dict[str, str]) -> None:
        """Start (or restart) the connector: same spec, state dir and token, output appended."""
        self.directory.mkdir(parents=True, exist_ok=True)
        spec = self.directory / "job-spec.json"
        if not spec.exists():
            spec.write_text(json.dumps(self.spec()))
        with open(self.directory / "stdout", "ab") as out, open(self.directory / "stderr", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "connector.cli", "run", "--spec", str(spec), "--profile", str(profile),
                 "--state-dir", str(self.directory / "state"),
                 "--termination-log", str(self.directory / "termination-log")],
                cwd=REPO, env=env, stdout=out, stderr=err)
        self.starts += 1
        self.ended_at = None

    def alive(self) -> bool:
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            return True
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        return False

    def printed(self) -> list[str]:
        path = self.directory / "stdout"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def log_tail(self, lines: int = 4) -> str:
        path = self.directory / "stderr"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n    ".join(text[-lines:])

    def stop(self) -> None:
        """A connector still running at the end: SIGTERM (it cancels its job), SIGKILL if stuck."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.stopped = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Row:
    scenario: str
    jobs: int
    duplicates: int
    lost: int
    lines_lost: int
    lines_doubled: int
    seconds: float | None
    note: str = ""


def jobs_by_tag() -> dict[str, list[str]]:
    """SLURM job ids per comment, ended jobs included (the testbed keeps them MinJobAge=3600 s)."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-O", "JobID:|,Comment:|"],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[1]:
            found.setdefault(parts[1].strip(), []).append(parts[0].strip())
    return found


def jobs_of(pod: Pod, tagged: dict[str, list[str]]) -> list[str]:
    """The pod's jobs: its tag, and the tags of later runs (`hpco-<uid>-r1`…) a wrong restart makes."""
    return [j for tag, ids in tagged.items() if tag == pod.tag or tag.startswith(pod.tag + "-r") for j in ids]


class Bench:
    """One relay, a relay-required testbed profile, and the pods of every scenario (the relay
    reads its static tokens once, at start)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from relay.local import RelayProcess
        from testbed import profile as testbed_profile

        self.work = Path(f"/tmp/hpc-offload-bench-faults-{uuid.uuid4().hex[:6]}")
        self.profile = self.work / "relay-required"
        self.profile.mkdir(parents=True)
        testbed_profile.write_dir(self.profile, "slurm-ssh", "127.0.0.1")
        conf = json.loads((self.profile / "configuration").read_text())
        (self.profile / "configuration").write_text(json.dumps({**conf, "ssh_client": "openssh",
                                                               "relay": "required"}))
        self.relay = RelayProcess(self.work / "relay")
        self.pods: dict[str, list[Pod]] = {}
        for name in args.only or SCENARIOS:
            count = args.connectors if name == "kills" else args.jobs
            self.pods[name] = [self._pod(name, i, args.seconds) for i in range(count)]

    def _pod(self, scenario: str, index: int, seconds: int) -> Pod:
        uid = str(uuid.uuid4())
        token = self.relay.token_for(NAMESPACE, f"f{index}", uid)
        return Pod(index, uid, token, self.work / scenario / f"f{index:03d}", seconds)

    def env(self, pod: Pod) -> dict[str, str]:
        return {**os.environ, "USER": os.environ.get("USER", "root"), **self.relay.env(pod.token)}

    def launch(self, pod: Pod) -> None:
        pod.launch(self.profile, self.env(pod))

    def run(self, name: str, pods: list[Pod], fault: Callable[[list[Pod]], str],
            wait_running: bool, timeout: float) -> Row:
        """Start every connector, inject the fault, wait for every connector to end, count."""
        print(f"bench: {name}: {len(pods)} connectors…", flush=True)
        started = time.monotonic()
        for pod in pods:
            self.launch(pod)
        names = {pod.tag for pod in pods}
        if wait_running:  # every job running (one that already ended cannot be hit any more)
            until(f"{len(pods)} jobs running", lambda: list(slurm_jobs(names).values()).count("RUNNING")
                  + sum(not pod.alive() for pod in pods) >= len(pods), 600, every=1, fatal=False)
            time.sleep(2)  # each has printed a line or two
        note = fault(pods)
        print(f"bench: {name}: {note}; waiting for every connector to end…", flush=True)
        until("every connector to end", lambda: not any(pod.alive() for pod in pods), timeout, every=0.5,
              fatal=False)
        for pod in pods:
            pod.stop()
            pod.alive()
        queued = slurm_jobs(names)
        if queued:  # a job whose connector did not end it: cancel it by its own id
            tagged = jobs_by_tag()
            subprocess.run(["scancel", *(j for tag in queued for j in tagged.get(tag, []))], check=False)
        return self.count(name, pods, started, note)

    def count(self, name: str, pods: list[Pod], started: float, note: str) -> Row:
        tagged = jobs_by_tag()
        duplicates = lost = lines_lost = lines_doubled = 0
        ends = [None if pod.stopped else pod.ended_at for pod in pods]
        for pod in pods:
            jobs = jobs_of(pod, tagged)
            duplicates += max(0, len(jobs) - 1)
            code = pod.proc.returncode if pod.proc is not None else None
            wrong = code != pod.code or pod.stopped or pod.ended_at is None or not jobs
            if wrong:
                lost += 1
                if lost <= 3:
                    print(f"bench: {name}: f{pod.index} ended {code} (its job's code {pod.code}), SLURM jobs "
                          f"{jobs}, {pod.starts} start(s); its log ends:\n    {pod.log_tail()}", flush=True)
            expected, printed = Counter(pod.expected_lines()), Counter(pod.printed())
            lines_lost += sum((expected - printed).values())
            lines_doubled += sum(max(0, printed[line] - 1) for line in expected)
            lines_doubled += sum(printed[line] for line in printed if line not in expected)  # foreign lines
        seconds = round(max(e for e in ends if e is not None) - started, 1) if all(ends) else None
        return Row(name, len(pods), duplicates, lost, lines_lost, lines_doubled, seconds, note)

    # --- the faults ---------------------------------------------------------------------------

    def restart_relay(self, pods: list[Pod]) -> str:
        running = self.running(pods)
        self.relay.kill()
        time.sleep(2)
        self.relay.start()
        return f"relay SIGKILLed and started again 2 s later ({running} jobs running)"

    def restart_sshd(self, down: float) -> Callable[[list[Pod]], str]:
        def fault(pods: list[Pod]) -> str:
            from testbed import api as testbed

            running = self.running(pods)
            try:
                killed = testbed.break_ssh(listener_too=True)
                time.sleep(down)
            finally:
                testbed.ensure_up()  # sshd again, whatever happened
            return (f"sshd and {killed - 1} SSH session process(es) killed, sshd back {down:g} s later "
                    f"({running} jobs running)")
        return fault

    def kill_connectors(self, kills: int, seconds: int, seed: int) -> Callable[[list[Pod]], str]:
        def fault(pods: list[Pod]) -> str:
            rng = random.Random(seed)
            gap = 0.8 * seconds / max(1, kills)  # mean gap: the kills spread over ~80 % of a job's length
            done = 0
            while done < kills:
                time.sleep(rng.uniform(0, 2 * gap))
                alive = [pod for pod in pods if pod.alive()]
                if not alive:
                    break
                pod = rng.choice(alive)
                assert pod.proc is not None
                pod.proc.kill()
                pod.proc.wait()
                done += 1
                self.launch(pod)  # the kubelet restarts the container, same state dir
            restarts = Counter(pod.starts - 1 for pod in pods)
            spread = ", ".join(f"{n} pod(s) x{k}" for k, n in sorted(restarts.items()))
            return f"{done} SIGKILLs + restarts ({spread})"
        return fault

    @staticmethod
    def running(pods: list[Pod]) -> int:
        return list(slurm_jobs({pod.tag for pod in pods}).values()).count("RUNNING")


def table(rows: list[Row], seconds: int) -> str:
    header = ("scenario", "jobs", "duplicates", "lost (wrong code or missing end)", "lines lost/doubled",
              "time to all ended (s)")
    titles = {"relay": "relay killed and restarted", "sshd": "sshd restarted under the relay",
              "kills": "connector SIGKILLs at random moments"}
    body = [(titles[r.scenario], str(r.jobs), str(r.duplicates), str(r.lost), f"{r.lines_lost} / {r.lines_doubled}",
             str(r.seconds) if r.seconds is not None else "not all ended") for r in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    lines = [" | ".join(c.ljust(widths[i]) for i, c in enumerate(line)).rstrip() for line in (header, *body)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"each job prints one line a second for {seconds} s; time: first connector started -> last ended")
    lines += [f"{titles[r.scenario]}: {r.note}" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--jobs", type=int, default=50, help="jobs of the relay and sshd scenarios (default 50)")
    parser.add_argument("--connectors", type=int, default=20, help="connectors of the kills scenario (default 20)")
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs in the kills scenario (default 100)")
    parser.add_argument("--seconds", type=int, default=60, help="how long each job runs (default 60)")
    parser.add_argument("--sshd-down", type=float, default=3.0, help="seconds sshd stays down (default 3)")
    parser.add_argument("--only", choices=SCENARIOS, action="append",
                        help="run only this scenario (repeatable; default: all three)")
    parser.add_argument("--oversubscribe", default="64x16",
                        help="testbed CPUSxJOBS for the run (default 64x16; none: the testbed as it is)")
    parser.add_argument("--seed", type=int, default=11, help="random seed of the kills")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/faults.py needs root (the testbed, its sshd)")
    if min(args.jobs, args.connectors, args.seconds) < 1 or args.kills < 0:
        raise SystemExit("bench/faults.py: --jobs, --connectors and --seconds must be at least 1, --kills at least 0")
    # a SIGTERM (timeout, a stopped CI job) unwinds as an exception: every connector still
    # running is stopped (it cancels its job), and so is the relay
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    bench = Bench(args)
    timeout = args.seconds + 600.0
    rows = []
    with oversubscribed(args.oversubscribe):
        bench.relay.start()
        try:
            for name, pods in bench.pods.items():
                fault: Callable[[list[Pod]], str]
                if name == "relay":
                    fault = bench.restart_relay
                elif name == "sshd":
                    fault = bench.restart_sshd(args.sshd_down)
                else:
                    fault = bench.kill_connectors(args.kills, args.seconds, args.seed)
                try:
                    rows.append(bench.run(name, pods, fault, wait_running=name != "kills", timeout=timeout))
                finally:
                    for pod in pods:
                        pod.stop()
                if len(bench.pods) > 1:  # each scenario's row as soon as it is known
                    print(table(rows[-1:], args.seconds), flush=True)
        finally:
            bench.relay.stop()
    print()
    print(table(rows, args.seconds))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(f"\n(connector logs and outputs: {bench.work})")


if __name__ == "__main__":
    main()
