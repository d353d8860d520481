"""The pod network's host side: the `cni0` bridge, forwarding, and fences against leaks.

We create the bridge (gateway 10.88.0.1/16) before anything starts because its address is the
node IP, the API server's bind address and where pods find host services (the SLURM testbed).
Two guard rules keep all cluster traffic on this machine: pods may not be forwarded out of the
bridge, and a ClusterIP that kube-proxy did not rewrite is rejected instead of leaving through
the default route (see FACTS.md: it otherwise reaches an outside proxy).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from e2e.cluster.config import BRIDGE, BRIDGE_GATEWAY, POD_CIDR, SERVICE_CIDR

_PREFIX = POD_CIDR.split("/")[1]
_TAG = "hpc-offload-e2e"

# (chain, rule) pairs in the filter table; DNAT by kube-proxy happens before filter, so only
# packets still addressed to an unrewritten ClusterIP (or leaving the bridge) match.
GUARD_RULES: tuple[tuple[str, list[str]], ...] = (
    ("FORWARD", ["-i", BRIDGE, "!", "-o", BRIDGE, "-j", "REJECT"]),
    ("FORWARD", ["-d", SERVICE_CIDR, "-j", "REJECT"]),
    ("OUTPUT", ["-d", SERVICE_CIDR, "-j", "REJECT"]),
)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def bridge_exists() -> bool:
    return _ip("link", "show", BRIDGE, check=False).returncode == 0


def ensure_bridge() -> None:
    if not bridge_exists():
        _ip("link", "add", BRIDGE, "type", "bridge")
    addrs = _ip("-4", "addr", "show", "dev", BRIDGE).stdout
    if f"{BRIDGE_GATEWAY}/{_PREFIX}" not in addrs:
        _ip("addr", "add", f"{BRIDGE_GATEWAY}/{_PREFIX}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    # pod -> ClusterIP -> pod on the same bridge needs the bridged reply to see conntrack
    bnf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if bnf.exists():
        bnf.write_text("1\n")


def delete_bridge() -> None:
    if bridge_exists():
        _ip("link", "delete", BRIDGE)


def _rule_args(rule: list[str]) -> list[str]:
    return [*rule, "-m", "comment", "--comment", _TAG]


def ensure_guards() -> None:
    for chain, rule in GUARD_RULES:
        args = _rule_args(rule)
        if subprocess.run(["iptables", "-C", chain, *args], capture_output=True).returncode:
            subprocess.run(["iptables", "-I", chain, "1", *args], check=True)


def remove_guards() -> None:
    for chain, rule in GUARD_RULES:
        args = _rule_args(rule)
        while not subprocess.run(["iptables", "-D", chain, *args], capture_output=True).returncode:
            pass


def remove_kube_firewall() -> None:
    """KUBE-FIREWALL (filter INPUT/OUTPUT) survives `kube-proxy --cleanup`: drop it too."""
    for chain in ("INPUT", "OUTPUT"):
        while not subprocess.run(["iptables", "-D", chain, "-j", "KUBE-FIREWALL"], capture_output=True).returncode:
            pass
    subprocess.run(["iptables", "-F", "KUBE-FIREWALL"], capture_output=True)
    subprocess.run(["iptables", "-X", "KUBE-FIREWALL"], capture_output=True)
