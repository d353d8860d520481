"""A remote `sh` kept open on an SSH connection: commands in on its stdin, answers out framed
by a random end line. The connector reads output every tick; over OpenSSH each separate
request costs an `ssh` process here and a new session there (~15 ms, most of the connector's
CPU), while a line to an open shell costs neither."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
import uuid
from pathlib import Path
from typing import NoReturn

from connector.errors import TransientError


class ShellClosed(TransientError):
    """The shell (or the link under it) is gone; its stderr says why."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


class RemoteShell:
    def __init__(self, argv: list[str], stderr_path: Path) -> None:
        """argv: the ssh command that runs `sh` on the far side (its stderr goes to a file, so
        a dead link can say why)."""
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as sink:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sink)
        self._buffer = b""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, command: str, timeout: float) -> tuple[int, bytes]:
        """Run one shell command line; its exit status and stdout (its stderr is discarded)."""
        token = uuid.uuid4().hex
        line = f"{{ {command}\n}} 2>/dev/null </dev/null; printf '\\n{token} %s\\n' \"$?\"\n"
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except OSError:  # a broken pipe: the shell is gone
            self._fail("the remote shell is gone")
        end = f"\n{token} ".encode()
        body, _, status = self._read_frame(end, time.monotonic() + timeout).rpartition(end)
        return int(status) if status.isdigit() else -1, body

    def _read_frame(self, end: bytes, deadline: float) -> bytes:
        """The bytes up to the end line ("<end><status>\\n") and that line, without its newline."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                at = self._buffer.find(end)
                newline = self._buffer.find(b"\n", at + len(end)) if at >= 0 else -1
                if newline >= 0:
                    frame, self._buffer = self._buffer[:newline], self._buffer[newline + 1:]
                    return frame
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self._fail("no answer in time")
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    self._fail("the remote shell closed")
                self._buffer += chunk

    def _fail(self, why: str) -> NoReturn:
        self.close()
        try:
            stderr = self.stderr_path.read_text(errors="replace")
        except OSError:
            stderr = ""
        raise ShellClosed(why, stderr)

    def close(self) -> None:
        """Never raises: closing stdin flushes what a dead shell did not take (EPIPE)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
