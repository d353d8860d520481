"""Where and how to reach an SSH login node; shared by both SSH transports, importing neither."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SSHTarget:
    host: str
    port: int
    user: str
    key_file: str
    known_hosts_file: str
    connect_timeout: float = 10.0
    keepalive: int = 15
    operation_timeout: float = 30.0
