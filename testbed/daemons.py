"""Start, find and stop the testbed's daemons through pid files of its own.

There is no systemd here, and other engineers run their own daemons on the same machine,
so a process is ours only if our pid file names it *and* /proc shows the expected program
(a stale pid file whose pid was reused by something else is never signalled). Each daemon
runs in the foreground in its own session, so it outlives the `up` that started it, and its
output goes to one log file. The argv and a hash of its config are stored beside the pid:
when they change, `ensure` restarts the daemon instead of keeping a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import layout

log = logging.getLogger("testbed")


class DaemonError(RuntimeError):
    """A daemon did not start or did not become ready; the message names its log."""


@dataclass(frozen=True)
class Daemon:
    """How to run one daemon, and how to tell that it is serving."""

    name: str
    argv: tuple[str, ...]
    user: str | None = None  # None: root
    env: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()  # for `status` only
    config: str = ""  # content that, when changed, requires a restart
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 30.0

    @property
    def pid_file(self) -> Path:
        return layout.RUN_DIR / f"{self.name}.pid"

    @property
    def sig_file(self) -> Path:
        return layout.RUN_DIR / f"{self.name}.sig"

    @property
    def log_file(self) -> Path:
        return layout.log_file(self.name)

    @property
    def signature(self) -> str:
        blob = json.dumps([self.argv, self.user, sorted(self.env.items()), self.config])
        return hashlib.sha256(blob.encode()).hexdigest()


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return []
    if state in ("Z", "X"):  # a zombie is dead for our purposes
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def running_pid(d: Daemon) -> int | None:
    """The daemon's pid if our pid file names a live process running its program."""
    try:
        pid = int(d.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    args = _cmdline(pid)
    if not args:
        return None
    program = os.path.basename(d.argv[0])
    if os.path.basename(args[0]) != program and program not in args[0]:
        return None
    return pid


def _wait_ready(d: Daemon, proc: subprocess.Popen[bytes] | None, pid: int) -> None:
    deadline = time.monotonic() + d.ready_timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise DaemonError(f"{d.name} exited with code {proc.returncode} while starting; "
                              f"read {d.log_file}{_tail(d.log_file)}")
        if proc is None and running_pid(d) != pid:
            raise DaemonError(f"{d.name} (pid {pid}) is gone; read {d.log_file}"
                              f"{_tail(d.log_file)}")
        if d.ready is None or d.ready():
            return
        if time.monotonic() > deadline:
            raise DaemonError(f"{d.name} (pid {pid}) not ready after {d.ready_timeout:.0f} s; "
                              f"read {d.log_file}{_tail(d.log_file)}")
        time.sleep(0.1)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n  | {line}" for line in text)


def start(d: Daemon) -> int:
    """Start the daemon in its own session and wait until it is ready."""
    layout.RUN_DIR.mkdir(parents=True, exist_ok=True)
    d.log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8", **d.env}
    # user= alone keeps root's groups; slurmrestd (rightly) refuses to run with them
    group = pwd.getpwnam(d.user).pw_gid if d.user is not None else None
    extra_groups: list[int] | None = [] if d.user is not None else None
    with open(d.log_file, "ab") as out:
        out.write(f"--- {time.strftime('%F %T')} starting: {' '.join(d.argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(  # noqa: S603 - argv is ours
            d.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, close_fds=True, cwd="/",
            user=d.user, group=group, extra_groups=extra_groups,
        )
    d.pid_file.write_text(f"{proc.pid}\n")
    d.sig_file.write_text(d.signature + "\n")
    _wait_ready(d, proc, proc.pid)
    log.info("%s: started (pid %d)", d.name, proc.pid)
    return proc.pid


def stop(d: Daemon, timeout: float = 10.0) -> bool:
    """Stop the daemon our pid file names (SIGTERM, then SIGKILL); True if one was running."""
    pid = running_pid(d)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running_pid(d) == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        if running_pid(d) == pid:
            log.info("%s: did not stop in %.0f s, killing pid %d", d.name, timeout, pid)
            os.kill(pid, signal.SIGKILL)
            while running_pid(d) == pid:
                time.sleep(0.05)
        log.info("%s: stopped (pid %d)", d.name, pid)
    for f in (d.pid_file, d.sig_file):
        f.unlink(missing_ok=True)
    return pid is not None


def ensure(d: Daemon) -> tuple[int, str]:
    """Make the daemon run with this exact spec; return (pid, what was done)."""
    pid = running_pid(d)
    if pid is not None:
        try:
            same = d.sig_file.read_text().strip() == d.signature
        except OSError:
            same = False
        if same:
            _wait_ready(d, None, pid)
            log.info("%s: already running (pid %d)", d.name, pid)
            return pid, "running"
        log.info("%s: settings changed, restarting (pid %d)", d.name, pid)
        stop(d)
        return start(d), "restarted"
    if d.pid_file.exists():
        log.info("%s: removing stale pid file %s", d.name, d.pid_file)
        d.pid_file.unlink(missing_ok=True)
    return start(d), "started"


def port_answers(host: str, port: int, expect: bytes = b"", timeout: float = 1.0) -> bool:
    """True if a TCP connect succeeds (and the first bytes start with `expect`, if given)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if not expect:
                return True
            sock.settimeout(timeout)
            return sock.recv(len(expect)).startswith(expect)
    except OSError:
        return False


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
        user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a short command; on failure raise with its stderr (commands here print no secrets)."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          user=user, check=False)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DaemonError(f"'{' '.join(argv[:3])}' failed (exit {proc.returncode}): "
                          + " / ".join(err))
    return proc
