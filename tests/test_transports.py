"""The transport contract every backend builds on, against the real testbed: the same
answers from the local transport, paramiko and the OpenSSH client."""

from __future__ import annotations

import uuid

import pytest

from connector.transport.base import Transport

TRANSPORTS = ["local", "paramiko", "openssh"]


@pytest.fixture(params=TRANSPORTS)
def transport(request, testbed_info):
    from connector.transport.local import LocalTransport
    from connector.transport.openssh import OpenSSHTransport
    from connector.transport.ssh import SSHTransport
    from connector.transport.target import SSHTarget
    from testbed import layout

    target = SSHTarget("127.0.0.1", 2222, layout.TEST_USER, str(layout.CLIENT_KEY), str(layout.KNOWN_HOSTS))
    made: Transport = {"local": LocalTransport, "paramiko": lambda: SSHTransport(target),
                       "openssh": lambda: OpenSSHTransport(target)}[request.param]()
    yield made
    made.close()


def test_read_files_answers_each_read_in_order(transport):
    directory = f"/tmp/hpco-transport-{uuid.uuid4().hex}"
    transport.mkdir(directory)
    try:
        output = bytes(range(256)) * 4 + b"no newline at the end\n-\n3\n"
        transport.write_file(f"{directory}/job.out", output)
        transport.write_file(f"{directory}/exit status", b"17\n")
        answers = transport.read_files([
            (f"{directory}/job.out", 0, 1 << 20),
            (f"{directory}/missing", 0, 64),
            (f"{directory}/exit status", 0, 64),
            (f"{directory}/job.out", 1000, 10),
            (f"{directory}/job.out", len(output) + 5, 10),
            (f"{directory}/it's $(missing)", 0, 64),
        ])
        assert answers == [output, None, b"17\n", output[1000:1010], b"", None]
        assert transport.read_files([]) == []
    finally:
        transport.remove(directory)
    assert transport.read_from(f"{directory}/job.out", 0) is None


@pytest.mark.exclusive
def test_openssh_reads_survive_a_dead_remote_shell_and_a_dead_master(testbed_info, tmp_path):
    """The per-tick reads ride on one open remote shell; one found dead is replaced before the
    read; when the link under it dies, one read fails as transient and the next one opens a new
    shell (and master)."""
    from connector.errors import TransientError
    from connector.transport.openssh import OpenSSHTransport
    from connector.transport.target import SSHTarget
    from testbed import api, layout

    target = SSHTarget("127.0.0.1", 2222, layout.TEST_USER, str(layout.CLIENT_KEY), str(layout.KNOWN_HOSTS))
    transport = OpenSSHTransport(target)
    path = f"/tmp/hpco-transport-{uuid.uuid4().hex}"
    try:
        transport.write_file(path, b"line\n")
        assert transport.read_files([(path, 0, 64)]) == [b"line\n"]
        shell = transport._shell()
        assert transport.read_files([(path, 1, 64)]) == [b"ine\n"]
        assert transport._shell() is shell, "the same shell answers every tick"
        shell.proc.kill()
        shell.proc.wait()  # a shell found dead before the tick is replaced, the tick not failed
        assert transport.read_files([(path, 0, 64)]) == [b"line\n"]
        assert transport._shell() is not shell
        assert api.break_ssh() >= 1  # every sshd session, the master's included
        for _ in range(3):  # the fault is seen once, then a new master and shell answer
            try:
                assert transport.read_files([(path, 0, 64)]) == [b"line\n"]
                break
            except TransientError:
                continue
        else:
            raise AssertionError("no read worked after the link was broken")
        assert transport.connects == 2
    finally:
        transport.remove(path)
        transport.close()


@pytest.mark.parametrize("how", ["killed", "exited"])
def test_remote_shell_that_died_says_so_once_as_transient(tmp_path, how):
    """A shell that is gone before a question is asked: the question fails as ShellClosed (a
    TransientError the life cycle retries), never as a BrokenPipeError, and close() is quiet."""
    from connector.transport.remote_shell import RemoteShell, ShellClosed

    shell = RemoteShell(["sh"], tmp_path / "stderr")
    assert shell.ask("echo hello", 10) == (0, b"hello\n")
    assert shell.ask("false", 10) == (1, b"")
    if how == "killed":
        shell.proc.kill()
    else:
        shell.proc.stdin.write(b"exit 0\n")
        shell.proc.stdin.flush()
    shell.proc.wait()
    with pytest.raises(ShellClosed):
        shell.ask("echo again", 10)
    assert not shell.alive
    shell.close()
