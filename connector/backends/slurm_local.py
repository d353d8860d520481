"""SLURM on this machine: for a connector running on a login node (or the testbed)."""

from __future__ import annotations

from connector.backends.slurm import SlurmBackend
from connector.transport.base import Transport
from connector.transport.local import LocalTransport


class SlurmLocalBackend(SlurmBackend):
    type_name = "slurm-local"

    def make_transport(self) -> Transport:
        return LocalTransport()
