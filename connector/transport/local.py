"""The local transport: the connector runs where `sbatch` works (a login node)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

from connector.errors import TransientError
from connector.transport.base import READ_LIMIT, CommandResult, Transport


class LocalTransport(Transport):
    def run(self, argv: list[str], timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        except FileNotFoundError:
            return CommandResult(127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            raise TransientError(f"`{argv[0]}` did not answer within {timeout:g}s") from None
        return CommandResult(
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )

    def interactive_argv(self, remote: list[str], tty: bool) -> list[str]:
        return remote

    def read_from(self, path: str, offset: int, limit: int = READ_LIMIT) -> bytes | None:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read(limit)
        except FileNotFoundError:
            return None

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def mkdir(self, path: str, mode: int = 0o700) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)

    def remove(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def upload(self, local_path: str, remote_path: str) -> None:
        shutil.copyfile(local_path, remote_path)

    def download(self, remote_path: str, local_path: str) -> None:
        shutil.copyfile(remote_path, local_path)

    def home(self) -> str:
        return os.path.expanduser("~")
