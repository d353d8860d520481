"""The OpenSSH transport: the system `ssh` client with one multiplexed master connection.

Same contract as the paramiko transport (strict host-key checking against the profile's
known_hosts only, key re-read at every reconnect), but the SSH protocol and its crypto live in
the `ssh` processes, not in the connector: the connector stays near 20 MB resident instead of
~35 MB with paramiko and cryptography loaded. The default wherever `ssh` is installed
(`"ssh_client": "auto"`); `"paramiko"` picks the other. Reads (every tick) go through one
remote shell kept open on the master; other commands and writes are one `ssh` each. Staged
files flow between a local file and the `ssh` process's pipe, never through our memory (a
1 GiB stage-in must fit a 64 Mi container). The destination always follows `--`, so a host
named like an option stays a host name.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO

from connector.errors import AuthError, HostKeyError, ProfileError, TransientError
from connector.transport.base import (
    READ_LIMIT,
    WRITE_SCRIPT,
    CommandResult,
    Transport,
    file_error,
    log_reconnect,
)
from connector.transport.remote_shell import RemoteShell, ShellClosed
from connector.transport.target import SSHTarget

_HOST_KEY_ERRORS = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
                    "No ED25519 host key is known", "host key is known for")
# For each (path, offset, limit): a header line, "-" for a missing file or the byte count n,
# then exactly n bytes. n is taken from the size first; the files only grow, so n are there.
_READ_MANY = """while [ $# -ge 3 ]; do
  if size=$(stat -c %s -- "$1" 2>/dev/null); then
    n=$((size - $2)); [ "$n" -lt 0 ] && n=0; [ "$n" -gt "$3" ] && n=$3
    printf '%s\\n' "$n"; tail -c +$(($2 + 1)) -- "$1" | head -c "$n"
  else
    printf -- '-\\n'
  fi
  shift 3
done"""
# Entries of a directory, each ended by NUL: a name may hold a newline (`ls` would split it
# into two names, one of them `..`), never a NUL or a slash.
_LIST = 'cd -- "$1" && find . -mindepth 1 -maxdepth 1 -printf "%P\\0"'
_TRANSFER_RATE = 1 << 20  # bytes/s a staged file is allowed at least, before it times out
_SOCKET_PATH_MAX = 104  # sun_path, less its terminating NUL, on the strictest systems


class OpenSSHTransport(Transport):
    def __init__(self, target: SSHTarget, runtime_dir: str | None = None) -> None:
        if shutil.which("ssh") is None:
            raise ProfileError("ssh_client 'openssh' needs the `ssh` program (package openssh-client)")
        self.target = target
        # a private dir for the control socket and a 0600 copy of the key: ssh refuses keys
        # that are group-readable, as the kubelet's fsGroup makes Secret files
        self.dir = Path(tempfile.mkdtemp(prefix="ssh-", dir=runtime_dir))
        if len(str(self.dir / "master")) + 20 > _SOCKET_PATH_MAX:  # ssh adds a suffix while binding
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = Path(tempfile.mkdtemp(prefix="ssh-"))
        self.round_trips = 0
        self.connects = 0
        self._remote: RemoteShell | None = None

    def _options(self) -> list[str]:
        t = self.target
        return [
            "-F", "/dev/null", "-p", str(t.port), "-i", str(self.dir / "key"),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ControlPath={self.dir / 'master'}", "-o", f"ServerAliveInterval={t.keepalive}",
            "-o", "ServerAliveCountMax=3", "-o", f"ConnectTimeout={int(t.connect_timeout)}",
            "-o", "LogLevel=ERROR", "-l", t.user,
        ]

    def _refresh_credentials(self) -> None:
        """Before a new master: re-read the key and known_hosts (a rotated Secret)."""
        for source, name in ((self.target.key_file, "key"), (self.target.known_hosts_file, "known_hosts")):
            try:
                data = Path(source).read_bytes()
            except FileNotFoundError:
                what = "ssh-privatekey" if name == "key" else "known_hosts"
                raise ProfileError(f"{source} is missing: add `{what}` to the profile Secret") from None
            fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        self.connects += 1

    @property
    def _where(self) -> str:
        return f"{self.target.user}@{self.target.host}:{self.target.port}"

    def _ensure_master(self) -> None:
        """One background master connection that every command rides on. Started detached
        (-f, output to a file): a master holding our pipes would keep each command waiting."""
        if (self.dir / "master").exists():
            return
        self._refresh_credentials()  # a new connection: a rotated key or known_hosts applies
        log = self.dir / "master.log"
        with open(log, "wb") as sink:
            try:
                code = subprocess.run(
                    ["ssh", *self._options(), "-o", "ControlMaster=yes", "-o", "ControlPersist=300",
                     "-f", "-N", "--", self.target.host],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sink,
                    timeout=self.target.connect_timeout + 5).returncode
            except subprocess.TimeoutExpired:
                raise TransientError(f"SSH to {self._where} did not connect in time") from None
        if code != 0:
            self._raise_link_error(log.read_text(errors="replace"))
        log_reconnect(self._where, self.connects)

    def _raise_link_error(self, err: str) -> None:
        if any(marker in err for marker in _HOST_KEY_ERRORS):
            raise HostKeyError(f"host key of {self.target.host}:{self.target.port} does not match "
                               "known_hosts (or is not in it): refusing to connect")
        if "Permission denied" in err:
            raise AuthError(f"SSH authentication as {self._where} failed (key not accepted)")
        last = err.strip().splitlines()[-1] if err.strip() else "no error text"
        raise TransientError(f"SSH to {self._where} failed: {last}")

    def _ssh(self, argv: list[str], stdin: bytes | None, timeout: float, *,
             source: BinaryIO | None = None, sink: BinaryIO | None = None) -> tuple[int, bytes, str]:
        """One command over the master. `source`/`sink`: a file for the command's stdin or
        stdout, handed to the `ssh` process as is (the bytes never pass through us)."""
        self.round_trips += 1
        self._ensure_master()
        command = ["ssh", *self._options(), "-o", "ControlMaster=no", "--", self.target.host, shlex.join(argv)]
        stdout = subprocess.PIPE if sink is None else sink
        try:
            if source is None:
                proc = subprocess.run(command, input=stdin or b"", stdout=stdout, stderr=subprocess.PIPE,
                                      timeout=timeout)
            else:
                proc = subprocess.run(command, stdin=source, stdout=stdout, stderr=subprocess.PIPE,
                                      timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransientError(f"`{argv[0]}` on {self._where} did not answer within {timeout:g}s") from None
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode == 255 and err.strip():
            self._drop_master()  # the next call builds a new one, with fresh credentials
            self._raise_link_error(err)
        return proc.returncode, proc.stdout or b"", err

    def run(self, argv: list[str], timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        code, out, err = self._ssh(argv, stdin, timeout)
        return CommandResult(code, out.decode("utf-8", "replace"), err)

    def interactive_argv(self, remote: list[str], tty: bool) -> list[str]:
        """`ssh -t` with this transport's strict options and a fresh 0600 key copy; no master
        (the session is the caller's, replacing its process)."""
        self._refresh_credentials()
        return ["ssh", *self._options(), "-o", "ControlPath=none", "-t" if tty else "-T", "--",
                self.target.host, shlex.join(remote)]

    def read_from(self, path: str, offset: int, limit: int = READ_LIMIT) -> bytes | None:
        return self.read_files([(path, offset, limit)])[0]

    def _shell(self) -> RemoteShell:
        """The open remote shell the per-tick reads go through (made on first use, and again
        after a fault, over the master)."""
        if self._remote is None or not self._remote.alive:
            self._ensure_master()
            self._remote = RemoteShell(["ssh", *self._options(), "-o", "ControlMaster=no", "--", self.target.host,
                                        "exec sh"], self.dir / "shell.log")
        return self._remote

    def read_files(self, reads: list[tuple[str, int, int]]) -> list[bytes | None]:
        """One line to the open remote shell: no ssh process here, no new session there."""
        self.round_trips += 1
        args = [str(item) for read in reads for item in read]
        try:
            code, out = self._shell().ask(shlex.join(["sh", "-c", _READ_MANY, "sh", *args]), 30)
        except ShellClosed as exc:
            self._remote = None
            if exc.stderr.strip():
                self._drop_master()  # as for any command: the next call builds a fresh one
                self._raise_link_error(exc.stderr)
            raise TransientError(f"reading {reads[0][0]} on {self._where}: {exc.message}") from None
        if code != 0:
            raise TransientError(f"reading {', '.join(path for path, _, _ in reads)} failed: exit {code}")
        results: list[bytes | None] = []
        for path, _, _ in reads:
            header, newline, out = out.partition(b"\n")
            if newline and header == b"-":
                results.append(None)
                continue
            size = int(header) if newline and header.isdigit() else -1
            if size < 0 or len(out) < size:
                raise TransientError(f"reading {path}: the answer was cut short")
            results.append(out[:size])
            out = out[size:]
        return results

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        code, _, err = self._ssh(["sh", "-c", WRITE_SCRIPT, "sh", path, f"{mode:o}"], data, 60)
        if code != 0:
            raise TransientError(f"writing {path} failed: {err.strip() or code}")

    def _test(self, flag: str, path: str) -> bool:
        return self._ssh(["test", flag, path], None, 30)[0] == 0

    def exists(self, path: str) -> bool:
        return self._test("-e", path)

    def is_dir(self, path: str) -> bool:
        return self._test("-d", path)

    def listdir(self, path: str) -> list[str]:
        code, out, err = self._ssh(["sh", "-c", _LIST, "sh", path], None, 60)
        if code != 0:
            raise file_error(path, err, code)
        return sorted(name.decode("utf-8", "surrogateescape") for name in out.split(b"\0") if name)

    def upload(self, local_path: str, remote_path: str) -> None:
        """The local file is the `ssh` process's stdin: streamed, whatever its size."""
        with open(local_path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            code, _, err = self._ssh(["sh", "-c", WRITE_SCRIPT, "sh", remote_path, "600"], None,
                                     _transfer_timeout(size), source=source)
        if code != 0:
            raise file_error(remote_path, err, code)

    def download(self, remote_path: str, local_path: str) -> None:
        """The `ssh` process writes the local file itself: streamed, whatever its size."""
        code, size, err = self._ssh(["stat", "-L", "-c", "%s", "--", remote_path], None, 30)
        if code != 0:
            raise file_error(remote_path, err, code)
        with open(local_path, "wb") as sink:
            code, _, err = self._ssh(["cat", "--", remote_path], None,
                                     _transfer_timeout(int(size) if size.strip().isdigit() else 0), sink=sink)
        if code != 0:
            raise file_error(remote_path, err, code)

    def home(self) -> str:
        return self.run(["pwd"]).stdout.strip()

    def _drop_master(self) -> None:
        if (self.dir / "master").exists():
            subprocess.run(["ssh", *self._options(), "-O", "exit", "--", self.target.host],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            (self.dir / "master").unlink(missing_ok=True)

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        self._drop_master()
        shutil.rmtree(self.dir, ignore_errors=True)


def _transfer_timeout(size: int) -> float:
    """A staged file's time: a minute, plus its size at the slowest rate we wait for."""
    return 60.0 + size / _TRANSFER_RATE

