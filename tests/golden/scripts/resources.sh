#!/bin/bash
#SBATCH --partition=gpu
#SBATCH --account=proj-42
#SBATCH --qos=normal
#SBATCH --time=02:00:00
#SBATCH --nodes=2
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=2
#SBATCH --mem=4096M
#SBATCH --gres=gpu:1
#SBATCH --constraint=a100
#SBATCH --exclusive
# Rendered by hpc-offload for research/train-x7k2p; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
srun --kill-on-bad-exit=1 singularity exec --nv docker://python:3.11 python3 -V
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
