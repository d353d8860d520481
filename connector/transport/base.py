"""The transport interface: run a command, move files. Backends build on it, so a workload
manager is written once and reached over any transport (paper requirement R5)."""

from __future__ import annotations

import errno
import logging
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass

from connector.errors import TransientError

log = logging.getLogger("hpc-connector")
READ_LIMIT = 1 << 20  # the most bytes one read returns
CHUNK = 1 << 15  # bytes a staged file moves by: its size never becomes our memory
# Writes stdin to "$1", created 0600 (umask) before any byte, then given mode "$2".
WRITE_SCRIPT = 'umask 077; cat > "$1" && chmod "$2" -- "$1"'
_ERRNOS = (("No such file", errno.ENOENT), ("Directory nonexistent", errno.ENOENT),
           ("can't cd", errno.ENOENT), ("Permission denied", errno.EACCES),
           ("Is a directory", errno.EISDIR), ("Not a directory", errno.ENOTDIR))


def log_reconnect(where: str, connects: int) -> None:
    """A new connection after the first: said once, so an operator sees a rotated key used."""
    if connects > 1:
        log.info("reconnected to %s (connection %d; key and known_hosts re-read)", where, connects)


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self, argv: list[str]) -> str:
        """One line for an error message: the command and what it said."""
        said = (self.stderr or self.stdout).strip().splitlines()
        detail = said[-1] if said else "no output"
        return f"`{shlex.join(argv)}` exited {self.returncode}: {detail}"


class Transport(ABC):
    """Commands and files on the HPC side. Methods raise TransientError when the link fails."""

    round_trips = 0  # requests sent over the link (commands and file operations)

    @abstractmethod
    def run(self, argv: list[str], timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run argv (no shell on our side; over SSH each item is quoted)."""

    @abstractmethod
    def read_from(self, path: str, offset: int, limit: int = READ_LIMIT) -> bytes | None:
        """Bytes of a file from offset (at most limit); None if the file does not exist."""

    def read_files(self, reads: list[tuple[str, int, int]]) -> list[bytes | None]:
        """Several `read_from(path, offset, limit)` at once. Transports where each request
        costs a process or a remote shell answer them in one round trip."""
        return [self.read_from(path, offset, limit) for path, offset, limit in reads]

    @abstractmethod
    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Create or replace a file; the mode is set before any byte is written."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    def mkdir(self, path: str, mode: int = 0o700) -> None:
        """Create a directory and its parents; no error if it exists."""
        result = self.run(["mkdir", "-p", "-m", f"{mode:o}", "--", path])
        if not result.ok:
            raise TransientError(f"cannot create {path}: {result.describe(['mkdir', path])}")

    def remove(self, path: str) -> None:
        """Remove a file or a directory tree; no error if it is gone."""
        self.run(["rm", "-rf", "--", path])

    @abstractmethod
    def listdir(self, path: str) -> list[str]: ...

    @abstractmethod
    def is_dir(self, path: str) -> bool: ...

    @abstractmethod
    def upload(self, local_path: str, remote_path: str) -> None:
        """Copy one local file to the HPC side (directories are walked by the caller)."""

    @abstractmethod
    def download(self, remote_path: str, local_path: str) -> None:
        """Copy one HPC-side file here."""

    @abstractmethod
    def home(self) -> str:
        """The HPC user's home directory, to resolve relative work dirs."""

    def interactive_argv(self, remote: list[str], tty: bool) -> list[str]:
        """A local command that runs `remote` on the HPC side with this process's terminal
        (for `kubectl hpc shell`); transports that cannot give one say so."""
        from connector.errors import BackendError

        raise BackendError(f"the {type(self).__name__} transport cannot open an interactive session; "
                           'use `"ssh_client": "openssh"` in the profile')

    def close(self) -> None:  # noqa: B027 - optional for transports holding nothing
        """Release connections."""


def file_error(path: str, stderr: str, code: int) -> OSError:
    """A remote command that ran but failed on a file (`cat`, `find`): the file's fault, not
    the link's, so nobody retries it. An OSError with the errno its stderr names
    (FileNotFoundError for a dangling symlink, PermissionError, …)."""
    said = stderr.strip().splitlines()
    reason = said[-1].rsplit(": ", 1)[-1] if said else f"exit {code}"
    number = next((n for text, n in _ERRNOS if text in reason), errno.EIO)
    return OSError(number, reason, path)
