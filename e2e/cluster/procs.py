"""Daemons started directly (no systemd here), tracked by pid files in the state dir.

A pid file is trusted only if that pid is alive and still runs the same executable, so a stale
file from a crashed run (pid reused by something else) is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from e2e.cluster.config import Paths


def _exe_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return None


def running_pid(paths: Paths, name: str) -> int | None:
    """The pid of daemon `name` if its pid file points at a live process of the same binary."""
    pidfile = paths.pidfile(name)
    try:
        pid_s, _, exe = pidfile.read_text().partition("\n")
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    current = _exe_of(pid)
    if current is None or current != exe.strip():
        return None
    # a zombie counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state == "Z" else pid


def start(
    paths: Paths,
    name: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start `argv` detached (own session, survives this Python), log to logs/NAME.log."""
    pid = running_pid(paths, name)
    if pid is not None:
        return pid
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.log(name), "ab") as log:
        log.write(f"\n=== {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    paths.pidfile(name).write_text(f"{proc.pid}\n{argv[0]}\n")
    return proc.pid


def stop(paths: Paths, name: str, timeout: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True if something was stopped."""
    pid = running_pid(paths, name)
    paths.pidfile(name).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _exe_of(pid) is None or _reap(pid):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    _reap(pid)
    return True


def _reap(pid: int) -> bool:
    """Reap `pid` if it is our (dead) child; True once it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state == "Z"


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    """Poll `check` until true; on timeout raise with the tail of the daemon's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.25)
    tail = ""
    if log is not None and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s\n{tail}")
