"""Which addresses sshd and slurmrestd listen on.

127.0.0.1 always, the local cluster's bridge (10.88.0.1) whenever it exists, and more with
`up --listen ADDR`. Added addresses are remembered, so a
later plain `up` (a test fixture) does not take them away from the cluster; one that is no
longer on any interface (the bridge was removed) is dropped with a log line.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Iterable

from . import layout

log = logging.getLogger("testbed")


class ListenError(ValueError):
    """An address that cannot be served."""


def is_local(address: str) -> bool:
    """True if a socket can bind this address (it is on an interface of this machine)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
        return True
    except OSError:
        return False


def _valid(address: str) -> str:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise ListenError(f"--listen {address!r}: not an IPv4 address") from None
    if ip.is_unspecified:
        raise ListenError("--listen 0.0.0.0: name one address; the testbed is not for the "
                          "whole network")
    return str(ip)


def default_host() -> tuple[str, str]:
    """The address a profile should name, and why: the local cluster's bridge when it exists
    (pods cannot reach 127.0.0.1 of this machine: that is the pod itself), else loopback."""
    if is_local(layout.CLUSTER_BRIDGE):
        return layout.CLUSTER_BRIDGE, "the local cluster's bridge, where its pods reach this machine"
    return layout.DEFAULT_ADDRESS, "loopback: no local cluster bridge here, so only for connectors on this machine"


def remembered() -> list[str]:
    try:
        data = json.loads(layout.LISTEN_FILE.read_text())
        return [str(a) for a in data]
    except (OSError, ValueError):
        return []


def resolve(extra: Iterable[str], forget: bool = False) -> tuple[str, ...]:
    """127.0.0.1, then the remembered (unless `forget`) and the new addresses that are on
    this machine."""
    new = [_valid(a) for a in extra]
    for a in new:
        if not is_local(a):
            raise ListenError(f"--listen {a}: no interface of this machine has this address "
                              "(for 10.88.0.1, start the e2e cluster's bridge first)")
    out = [layout.DEFAULT_ADDRESS]
    for a in [] if forget else remembered():
        if a not in out and a not in new:
            if is_local(a):
                out.append(a)
            else:
                log.info("listen: %s is gone from this machine; no longer serving it", a)
    out += [a for a in new if a not in out]
    if layout.CLUSTER_BRIDGE not in out and is_local(layout.CLUSTER_BRIDGE):
        out.append(layout.CLUSTER_BRIDGE)  # the local cluster is up: its pods come from there
    layout.STATE_DIR.mkdir(parents=True, exist_ok=True)
    if remembered() != out:
        layout.LISTEN_FILE.write_text(json.dumps(out) + "\n")
    return tuple(out)
