"""Issue 12 item 17, the paramiko transport: files are created 0600, not created with the SFTP
server's default mode and narrowed afterwards. Against the testbed's real sshd; the file's
mode is read the moment it appears (inotify), as another local user racing to open it would."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import threading
import uuid
from pathlib import Path

import pytest

IN_CREATE = 0x100
_EVENT = struct.Struct("iIII")


def watch_creations(directory: Path, seen: dict[str, int], stop: threading.Event) -> int:
    """Record each new file's mode as it is created; returns the inotify fd (close it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(0)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    assert libc.inotify_add_watch(fd, str(directory).encode(), IN_CREATE) >= 0

    def loop() -> None:
        while not stop.is_set():
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                with contextlib.suppress(FileNotFoundError):
                    seen[name.decode()] = os.stat(directory / name.decode()).st_mode & 0o777

    threading.Thread(target=loop, daemon=True).start()
    return fd


def test_item17_paramiko_creates_files_0600_from_the_start(testbed_info) -> None:
    """Item 17: paramiko's SFTP open() created the env file (secret values) with the server's
    default mode (0644 here) and chmod-ed it a round trip later: another user on the login
    node could open it in between and read the secrets written next."""
    from connector.transport.ssh import SSHTransport
    from connector.transport.target import SSHTarget
    from testbed import layout

    target = SSHTarget("127.0.0.1", 2222, layout.TEST_USER, str(layout.CLIENT_KEY),
                       str(layout.KNOWN_HOSTS))
    transport = SSHTransport(target)
    directory = Path(f"/tmp/hpco-mode-{uuid.uuid4().hex}")
    transport.mkdir(str(directory))
    seen: dict[str, int] = {}
    stop = threading.Event()
    fd = watch_creations(directory, seen, stop)
    try:
        for index in range(40):
            transport.write_file(f"{directory}/job-{index}.env", b"export TOKEN=secret\n", 0o600)
        deadline = 0
        while len(seen) < 40 and deadline < 100:
            stop.wait(0.02)
            deadline += 1
        assert len(seen) == 40, f"only {len(seen)} creations seen"
        wider = {name: oct(mode) for name, mode in seen.items() if mode != 0o600}
        assert not wider, f"files were visible with a wider mode first: {wider}"
        for index in range(40):  # and the content is there, 0600 at the end too
            path = directory / f"job-{index}.env"
            assert path.read_bytes() == b"export TOKEN=secret\n"
            assert path.stat().st_mode & 0o777 == 0o600
        transport.write_file(f"{directory}/job-0.env", b"again\n", 0o600)  # an existing file
        assert (directory / "job-0.env").stat().st_mode & 0o777 == 0o600
    finally:
        stop.set()
        os.close(fd)
        transport.remove(str(directory))
        transport.close()


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the testbed needs root")
