#!/bin/bash
#SBATCH --account=plgproject
#SBATCH --qos=normal
#SBATCH --nodes=2
#SBATCH --ntasks=16
# Rendered by hpc-offload for default/sweep-xxxxx; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
srun --kill-on-bad-exit=1 singularity exec docker://ghcr.io/example/mpi-sweep:2.1 mpirun /opt/sweep --grid 64
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
