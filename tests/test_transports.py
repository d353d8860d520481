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
