"""SLURM on a login node reached over SSH: the usual way to an HPC site, no change there."""

from __future__ import annotations

from connector.backends.slurm import SlurmBackend


class SlurmSSHBackend(SlurmBackend):
    type_name = "slurm-ssh"
    access = "ssh"
