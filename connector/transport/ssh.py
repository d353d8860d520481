"""The SSH transport (paramiko): one connection reused for commands and SFTP.

Host keys are checked strictly against the profile's known_hosts (RejectPolicy, no system or
user files); the key and known_hosts are re-read at every (re)connect, so a rotated Secret
takes effect without restarting the job. Link failures become TransientError and drop the
connection; the next call reconnects.
"""

from __future__ import annotations

import contextlib
import errno
import shlex
import socket
import stat
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from connector.errors import AuthError, HostKeyError, ProfileError, TransientError
from connector.transport.base import (
    CHUNK,
    READ_LIMIT,
    WRITE_SCRIPT,
    CommandResult,
    Transport,
    file_error,
    log_reconnect,
)
from connector.transport.target import SSHTarget

# paramiko imports `invoke` only for ssh_config "Match exec", which the connector never uses;
# keeping it out saves ~7 MB of the connector's resident memory.
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
import paramiko  # noqa: E402

if TYPE_CHECKING:
    from paramiko.sftp_client import SFTPClient

T = TypeVar("T")
_LINK_ERRORS = (OSError, EOFError, socket.timeout, paramiko.SSHException)


class _FileFault(Exception):
    """The SFTP server refused an operation on a file: the file's fault, not the link's."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _create(sftp: SFTPClient, path: str, mode: int) -> paramiko.SFTPFile:
    """Open for writing with `mode` in the OPEN request itself: paramiko's open() sends no
    attributes, so a new file had the server's default mode (0644) until a chmod one round
    trip later, long enough for another user on the login node to open it (issue 12, 17)."""
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = mode
    flags = paramiko.sftp.SFTP_FLAG_WRITE | paramiko.sftp.SFTP_FLAG_CREATE | paramiko.sftp.SFTP_FLAG_TRUNC
    kind, msg = sftp._request(paramiko.sftp.CMD_OPEN, sftp._adjust_cwd(path), flags, attrs)  # type: ignore[attr-defined]
    if kind != paramiko.sftp.CMD_HANDLE:
        raise paramiko.SFTPError("Expected handle")
    return paramiko.SFTPFile(sftp, msg.get_binary(), "wb")


def _open_socket(target: SSHTarget) -> socket.socket:
    """A TCP connection with Nagle off. paramiko leaves it on, and every small SSH packet
    (a channel request, a command's stdin) then waits for the peer's delayed ACK: ~40 ms a
    command instead of ~5 ms. OpenSSH sets TCP_NODELAY itself."""
    sock = socket.create_connection((target.host, target.port), timeout=target.connect_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SSHTransport(Transport):
    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self._client: paramiko.SSHClient | None = None
        self._sftp: SFTPClient | None = None
        self.connects = 0  # for the benchmark: how often the link was (re)established
        self.round_trips = 0

    # --- connection -------------------------------------------------------------------------

    def _connect(self) -> paramiko.SSHClient:
        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._client
            self.close()
        target = self.target
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(target.known_hosts_file)
        except FileNotFoundError:
            raise ProfileError(
                f"known_hosts file {target.known_hosts_file} is missing: add `known_hosts` to the "
                "profile Secret (strict host-key checking is always on)"
            ) from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            pkey = paramiko.PKey.from_path(target.key_file)
        except FileNotFoundError:
            raise ProfileError(
                f"private key {target.key_file} is missing: add `ssh-privatekey` to the profile "
                "Secret"
            ) from None
        except (paramiko.SSHException, ValueError, UnicodeDecodeError) as exc:
            raise ProfileError(f"private key {target.key_file} cannot be read: {exc}") from None
        where = f"{target.user}@{target.host}:{target.port}"
        try:
            client.connect(
                target.host,
                port=target.port,
                sock=_open_socket(target),
                username=target.user,
                pkey=pkey,
                timeout=target.connect_timeout,
                banner_timeout=target.connect_timeout,
                auth_timeout=target.connect_timeout,
                look_for_keys=False,
                allow_agent=False,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"host key of {target.host}:{target.port} does not match known_hosts "
                f"(got {exc.key.get_name()} {exc.key.fingerprint}): refusing to connect"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise AuthError(f"SSH authentication as {where} failed (key not accepted)") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    f"host {target.host}:{target.port} is not in known_hosts: refusing to connect"
                ) from None
            raise TransientError(f"SSH to {where} failed: {exc}") from None
        except (OSError, EOFError) as exc:
            client.close()
            raise TransientError(f"cannot reach {where}: {exc}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(target.keepalive)
        self._client = client
        self.connects += 1
        log_reconnect(where, self.connects)
        return client

    def _sftp_client(self) -> SFTPClient:
        if self._sftp is None:
            self._sftp = self._connect().open_sftp()
            # a hung server must become a TransientError, not a connector stuck forever
            channel = self._sftp.get_channel()
            if channel is not None:
                channel.settimeout(self.target.operation_timeout)
        return self._sftp

    def _guard(self, action: Callable[[], T], what: str) -> T:
        """Run one operation; a broken link drops the connection and becomes TransientError."""
        self.round_trips += 1
        try:
            return action()
        except (HostKeyError, ProfileError, TransientError):
            raise
        except FileNotFoundError:
            raise
        except PermissionError as exc:
            raise TransientError(f"{what}: permission denied ({exc})") from None
        except _LINK_ERRORS as exc:
            self.close()
            raise TransientError(f"{what}: SSH link failed ({exc or type(exc).__name__})") from None

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):  # closing a dead link may fail any way
                self._sftp.close()
        if self._client is not None:
            self._client.close()
        self._sftp = None
        self._client = None

    # --- commands ---------------------------------------------------------------------------

    def run(self, argv: list[str], timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        command = shlex.join(argv)

        def execute() -> CommandResult:
            client = self._connect()
            chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
            out = chan_out.read()
            err = chan_err.read()
            code = chan_out.channel.recv_exit_status()
            return CommandResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

        return self._guard(execute, f"running {argv[0]}")

    # --- files ------------------------------------------------------------------------------

    def read_from(self, path: str, offset: int, limit: int = READ_LIMIT) -> bytes | None:
        def read() -> bytes | None:
            try:
                with self._sftp_client().open(path, "rb") as handle:
                    handle.seek(offset)
                    return bytes(handle.read(limit))
            except FileNotFoundError:
                return None

        return self._guard(read, f"reading {path}")

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        def write() -> None:
            sftp = self._sftp_client()
            with _create(sftp, path, mode) as handle:
                handle.chmod(mode)  # a file that existed keeps its mode on open: set it first
                handle.write(data)

        self._guard(write, f"writing {path}")

    def exists(self, path: str) -> bool:
        def check() -> bool:
            try:
                self._sftp_client().stat(path)
                return True
            except FileNotFoundError:
                return False

        return self._guard(check, f"checking {path}")

    def is_dir(self, path: str) -> bool:
        def check() -> bool:
            try:
                mode = self._sftp_client().stat(path).st_mode
            except FileNotFoundError:
                return False
            return bool(mode is not None and stat.S_ISDIR(mode))

        return self._guard(check, f"checking {path}")

    def listdir(self, path: str) -> list[str]:
        names: list[str] = []

        def listing() -> None:
            names.extend(sorted(self._sftp_client().listdir(path)))

        self._file_op(listing, path, "listing")
        return names

    def upload(self, local_path: str, remote_path: str) -> None:
        """`cat` into the file (created 0600) on an exec channel, CHUNK bytes at a time."""
        with open(local_path, "rb") as source:
            self._stream(["sh", "-c", WRITE_SCRIPT, "sh", remote_path, "600"], remote_path,
                         "uploading", source=source)

    def download(self, remote_path: str, local_path: str) -> None:
        """`cat` of the file on an exec channel, written out CHUNK bytes at a time. Not SFTP's
        get(): its prefetch keeps every block that arrived before we wrote it (a 1 GiB
        download took ~1 GB of memory) and without prefetch it is a third as fast."""
        with open(local_path, "wb") as sink:
            self._stream(["cat", "--", remote_path], remote_path, "downloading", sink=sink)

    def _stream(self, argv: list[str], path: str, verb: str, source: BinaryIO | None = None,
                sink: BinaryIO | None = None) -> None:
        """One command with a local file as its stdin or stdout. What is in flight is bounded
        by the channel's window; a broken link is a TransientError, a failed command an
        OSError naming the file (staging does not retry it)."""
        def execute() -> tuple[int, bytes]:
            link = self._connect().get_transport()
            if link is None:
                raise EOFError("no SSH transport")
            channel = link.open_session()
            try:
                channel.settimeout(self.target.operation_timeout)
                channel.exec_command(shlex.join(argv))
                try:
                    while source is not None and (chunk := source.read(CHUNK)):
                        channel.sendall(chunk)
                except OSError:
                    if not channel.exit_status_ready():
                        raise
                    # the command ended early (it could not create the file): its status says why
                channel.shutdown_write()
                while chunk := channel.recv(CHUNK):
                    if sink is not None:
                        sink.write(chunk)
                code = channel.recv_exit_status()
                err = b""
                while len(err) < READ_LIMIT and (part := channel.recv_stderr(CHUNK)):
                    err += part
                return code, err
            finally:
                channel.close()

        code, err = self._guard(execute, f"{verb} {path}")
        if code != 0:
            raise file_error(path, err.decode("utf-8", "replace"), code)

    def _file_op(self, action: Callable[[], object], path: str, verb: str) -> None:
        """A refusal from the SFTP server (no such file, permission denied, "Failure") is an
        OSError naming the file, which staging does not retry; a broken link stays a
        TransientError."""
        def guarded() -> None:
            try:
                action()
            except OSError as exc:
                if isinstance(exc, FileNotFoundError | PermissionError) or (
                        type(exc) is OSError and exc.errno is None):
                    raise _FileFault(exc) from None
                raise

        try:
            self._guard(guarded, f"{verb} {path}")
        except _FileFault as fault:  # FileNotFoundError, PermissionError or OSError, by errno
            error = fault.error
            raise OSError(error.errno or errno.EIO, error.strerror or str(error), path) from None

    def home(self) -> str:
        return self._guard(lambda: self._sftp_client().normalize("."), "finding the home directory")
