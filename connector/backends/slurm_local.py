"""SLURM on this machine: for a connector running on a login node (or the testbed)."""

from __future__ import annotations

from connector.backends.slurm import SlurmBackend


class SlurmLocalBackend(SlurmBackend):
    type_name = "slurm-local"
    access = "local"
