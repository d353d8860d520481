"""A real single-node SLURM (munge, slurmctld, slurmd, slurmrestd, sshd) for demos and tests."""
