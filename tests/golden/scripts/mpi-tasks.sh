#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks=4
#SBATCH --gres=gpu:1
# Rendered by hpc-offload for research/train-x7k2p; runtime: apptainer.
# Environment values reach this job from the scheduler, never from this file.
srun --kill-on-bad-exit=1 apptainer exec --nv /shared/sif/mpi.sif python3 solve.py
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
