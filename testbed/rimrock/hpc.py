"""The login-node side: an SSH session as the proxy's user, and Rimrock's three job scripts.

Rimrock runs each operation as one GSI-SSH login to the requested host (at most 5 at a time
per user, `gsissh.pool.size`) with a 20 s limit, and reads the JSON its helper scripts print
(`scripts/start`, `status`, `stop`). Here the login is plain SSH to the testbed's sshd with a
key only this server holds, host keys checked strictly, and a user's connection is kept open
for 30 s between operations (a login per request cost 100-300 ms on this machine and load on
sshd every engineer shares); the scripts' behaviour is reproduced by short commands whose
every value is quoted:

- start: the script is uploaded as `script-<uuid>.sh` into the working directory (created if
  missing), `sbatch` runs there; its output must end in `job <N>` (else exit 24), then
  `scontrol show job N` gives StdOut/StdErr; the job id is `<N>.<hostname of the login
  node>`. sbatch failing → exit 22 with `{"result": "ERROR", "error_message": "sbatch error!
  …"}` on stdout; scontrol failing → exit 23.
- status: one query for all the user's polled jobs on that host; its exit status is ignored,
  so an unreachable controller reports no job at all (and Rimrock then calls them FINISHED).
- stop: `scancel` of the numeric prefix of the id; failing → exit 22, "scancel error! …".
"""

from __future__ import annotations

import json
import re
import select
import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

OUTPUT_LIMIT = 1 << 20  # bytes kept per stream of one command
SQUEUE_FORMAT = "%A|%T|%D|%C|%M|%V|%S|%e"  # id, state, nodes, cpus, elapsed, submit, start, end
# scripts/status (v2.0.4): SLURM state → Rimrock status; any other state becomes ""
STATE_MAP = {
    "PENDING": "QUEUED", "RUNNING": "RUNNING", "SUSPENDED": "RUNNING", "CANCELLED": "RUNNING",
    "COMPLETING": "RUNNING", "CONFIGURING": "RUNNING", "COMPLETED": "FINISHED",
    "FAILED": "ERROR", "TIMEOUT": "ERROR", "PREEMPTED": "ERROR", "NODE_FAIL": "ERROR",
    "SPECIAL_EXIT": "ERROR",
}
# the states whose jobs get history (sacct -s BF,CA,F,NF,PR,TO,CD in scripts/status)
HISTORY_STATES = {"BOOT_FAIL", "CANCELLED", "FAILED", "NODE_FAIL", "PREEMPTED", "TIMEOUT",
                  "COMPLETED"}
_JOB_LINE = re.compile(r"^(.*)(job [0-9]*)$", re.S)


class ConnectError(RuntimeError):
    """The SSH login itself failed (Rimrock: a JSch/GSS exception, HTTP 500)."""


class UploadError(RuntimeError):
    """The script could not be put in place (Rimrock: PLGData upload failed, HTTP 500)."""


@dataclass
class RunResult:
    """One command: exit code, stdout, stderr, and whether the time limit cut it short."""

    exit_code: int = 0
    output: str = ""
    error: str = ""
    timed_out: bool = False


@dataclass
class StatusResult:
    statuses: dict[str, str] = field(default_factory=dict)  # job id → Rimrock status
    history: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class LoginNode:
    """Where the testbed's "host" is reached (every accepted host name is this node)."""

    address: str
    port: int
    known_hosts: Path
    key_path: Path
    aliases: frozenset[str]
    pool_size: int = 5
    timeout: float = 20.0


class _Link:
    """One authenticated SSH connection of a user (kept open between requests)."""

    def __init__(self, client: paramiko.SSHClient) -> None:
        self.client = client
        self.sftp: paramiko.SFTPClient | None = None
        self.idle_since = time.monotonic()

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active() and transport.is_authenticated()

    def close(self) -> None:
        if self.sftp is not None:
            self.sftp.close()
        self.client.close()


class Session:
    """A user's SSH connection lent for one operation: a few commands and file transfers
    sharing one time limit. A reused connection that turns out dead is replaced once."""

    def __init__(self, gateway: Gateway, login: str, link: _Link, reused: bool, deadline: float) -> None:
        self.gateway, self.login, self.link, self.reused = gateway, login, link, reused
        self.deadline = deadline
        self.broken = False  # a command cut short, a lost connection: never lend it again
        self._closed = False

    def _left(self) -> float:
        return max(0.1, self.deadline - time.monotonic())

    def _replace(self) -> None:
        self.link.close()
        self.link, self.reused = self.gateway.connect(self.login), False

    def run(self, command: str) -> RunResult:
        """Run until it exits or the session's time is up (then timed_out, output so far)."""
        try:
            chan = self._channel()
        except (paramiko.SSHException, EOFError, OSError):
            if not self.reused:
                self.broken = True
                raise ConnectError("the SSH connection to the login node was lost") from None
            self._replace()
            chan = self._channel()
        out, err = bytearray(), bytearray()
        try:
            chan.exec_command(command)
            while True:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    self.broken = True
                    return RunResult(0, out.decode(errors="replace"), err.decode(errors="replace"),
                                     timed_out=True)
                select.select([chan], [], [], min(left, 0.5))
                while chan.recv_ready():
                    out += chan.recv(65536)[: max(0, OUTPUT_LIMIT - len(out))]
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)[: max(0, OUTPUT_LIMIT - len(err))]
                if chan.exit_status_ready() and chan.eof_received and not chan.recv_ready() \
                        and not chan.recv_stderr_ready():
                    break
            return RunResult(chan.recv_exit_status(), out.decode(errors="replace"),
                             err.decode(errors="replace"))
        except BaseException:
            self.broken = True
            raise
        finally:
            chan.close()

    def _channel(self) -> paramiko.Channel:
        transport = self.link.client.get_transport()
        if transport is None or not transport.is_active():
            raise EOFError("connection closed")
        return transport.open_session(timeout=self._left())

    def sftp(self) -> paramiko.SFTPClient:
        if self.link.sftp is None:
            try:
                self.link.sftp = self.link.client.open_sftp()
            except (paramiko.SSHException, EOFError, OSError):
                if not self.reused:
                    self.broken = True
                    raise ConnectError("the SSH connection to the login node was lost") from None
                self._replace()
                self.link.sftp = self.link.client.open_sftp()
        channel = self.link.sftp.get_channel()
        if channel is not None:
            channel.settimeout(self._left())
        return self.link.sftp

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.gateway.give_back(self.login, self.link, reusable=not self.broken)


class Gateway:
    """SSH connections to the login node: at most `pool_size` operations at a time per user
    (Rimrock's gsissh pool), connections kept open IDLE seconds between operations."""

    IDLE = 30.0

    def __init__(self, node: LoginNode) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._pools: dict[str, threading.BoundedSemaphore] = {}
        self._idle: dict[str, list[_Link]] = {}
        self._key = paramiko.Ed25519Key.from_private_key_file(str(node.key_path))

    def _pool(self, login: str) -> threading.BoundedSemaphore:
        with self._lock:
            return self._pools.setdefault(login, threading.BoundedSemaphore(self.node.pool_size))

    def check_host(self, host: str) -> None:
        if host not in self.node.aliases:
            raise ConnectError(f"java.net.UnknownHostException: {host}")

    def connect(self, login: str) -> _Link:
        """A new login as the user, the host key checked against known_hosts."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.node.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.node.address, port=self.node.port, username=login, pkey=self._key,
                           allow_agent=False, look_for_keys=False, timeout=10, banner_timeout=10,
                           auth_timeout=10)
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise ConnectError(f"cannot log in to the login node as {login}: {exc}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)  # a dead idle connection is noticed, not lent
        return _Link(client)

    def _take_idle(self, login: str) -> _Link | None:
        now = time.monotonic()
        with self._lock:
            links = self._idle.get(login, [])
            stale = [link for link in links if now - link.idle_since > self.IDLE or not link.alive()]
            fresh = [link for link in links if link not in stale]
            self._idle[login] = fresh[:-1]
            found = fresh[-1] if fresh else None
        for link in stale:
            link.close()
        return found

    def open(self, host: str, login: str, timeout: float | None = None) -> Session:
        """A session holding one of the user's pool slots until it is closed."""
        self.check_host(host)
        pool = self._pool(login)
        if not pool.acquire(timeout=60):
            raise ConnectError(f"more than {self.node.pool_size} sessions of {login} for a minute")
        try:
            link = self._take_idle(login)
            reused = link is not None
            if link is None:
                link = self.connect(login)
        except BaseException:
            pool.release()
            raise
        return Session(self, login, link, reused, time.monotonic() + (timeout or self.node.timeout))

    def give_back(self, login: str, link: _Link, reusable: bool) -> None:
        try:
            if reusable and link.alive():
                link.idle_since = time.monotonic()
                with self._lock:
                    self._idle.setdefault(login, []).append(link)
            else:
                link.close()
        finally:
            self._pool(login).release()

    @contextmanager
    def session(self, host: str, login: str, timeout: float | None = None) -> Iterator[Session]:
        sess = self.open(host, login, timeout)
        try:
            yield sess
        except BaseException:
            sess.broken = True
            raise
        finally:
            sess.close()


def _report(result: str, **values: str) -> str:
    return json.dumps({"result": result, **values}, indent="\t")


def start(sess: Session, working_directory: str, script: str, name: str) -> RunResult:
    """Upload the script, submit it where it lies, report id and output files (scripts/start)."""
    mkdir = sess.run(f"mkdir -p -- {shlex.quote(working_directory)}")
    if mkdir.timed_out:
        return mkdir
    if mkdir.exit_code != 0:
        raise UploadError(f"cannot create {working_directory}: {mkdir.error.strip()}")
    path = f"{working_directory.rstrip('/')}/{name}"
    try:
        with sess.sftp().open(path, "w") as f:
            f.write(script.encode())
    except OSError as exc:
        raise UploadError(f"cannot upload {path}: {exc}") from None
    sub = sess.run(f"cd {shlex.quote(working_directory)} && sbatch {shlex.quote(name)} 2>&1")
    if sub.timed_out:
        return sub
    output = sub.output.strip()
    if sub.exit_code != 0:
        return RunResult(22, _report("ERROR", error_message=f"sbatch error! {output}"))
    match = _JOB_LINE.match(output)
    if match is None:
        return RunResult(24, _report("ERROR", error_message="sbatch error! Unable to find JOB ID "
                                                            f"in: {output}"))
    number = match.group(2).split(" ")[1]
    show = sess.run(f"scontrol show job {shlex.quote(number)} 2>&1; hostname")
    if show.timed_out:
        return show
    lines = show.output.rstrip("\n").split("\n")
    hostname, details = lines[-1].strip(), "\n".join(lines[:-1])
    if show.exit_code != 0 or "StdOut=" not in details:
        return RunResult(23, _report("ERROR", error_message=f"scontrol error! {details.strip()}"))
    paths = dict(re.findall(r"^\s*(StdOut|StdErr)=(.*?)\s*$", details, re.M))
    return RunResult(0, _report("OK", job_id=f"{number}.{hostname}",
                                standard_output=paths.get("StdOut", ""),
                                standard_error=paths.get("StdErr", "")))


def unscoped(job_id: str) -> str:
    return job_id.split(".", 1)[0]


def status(sess: Session, login: str, job_ids: list[str]) -> tuple[RunResult, StatusResult]:
    """One queue query for all these jobs (scripts/status). A job the queue does not list
    gets no entry; a state outside the table gets ""."""
    numbers = [unscoped(j) for j in job_ids]
    if not all(n.isdigit() for n in numbers):  # squeue refuses the whole list then
        numbers = [n for n in numbers if n.isdigit()] or ["0"]
    run = sess.run(f"squeue -h -t all -u {shlex.quote(login)} -o {shlex.quote(SQUEUE_FORMAT)} "
                   f"-j {shlex.quote(','.join(numbers))} 2>&1; exit 0")
    result = StatusResult()
    if run.timed_out or run.exit_code != 0:
        return run, result
    rows = {}
    for line in run.output.splitlines():
        parts = line.strip().split("|")
        if len(parts) == len(SQUEUE_FORMAT.split("|")) and parts[0].isdigit():
            rows[parts[0]] = parts
    for job_id in job_ids:
        row = rows.get(unscoped(job_id))
        if row is None:
            continue
        result.statuses[job_id] = STATE_MAP.get(row[1], "")
        if row[1] in HISTORY_STATES and row[6]:  # the script's `-n "$job_starttime"`
            result.history[job_id] = {"nodes": row[2], "cores": row[3], "wall_time": row[4],
                                      "queue_time": row[5], "start_time": row[6],
                                      "end_time": row[7]}
    return run, result


def stop(sess: Session, job_id: str) -> RunResult:
    """scancel the job's numeric prefix (scripts/stop)."""
    number = re.match(r"^[0-9]*", job_id)
    arg = shlex.quote(number.group(0)) if number and number.group(0) else "''"
    run = sess.run(f"scancel {arg} 2>&1")
    if run.timed_out:
        return run
    if run.exit_code != 0:
        return RunResult(22, _report("ERROR", error_message=f"scancel error! {run.output.strip()}"))
    return RunResult(0, _report("OK"))
