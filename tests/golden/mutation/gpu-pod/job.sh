#!/bin/bash
#SBATCH --partition=gpu
#SBATCH --cpus-per-task=8
#SBATCH --mem=32768M
#SBATCH --gres=gpu:2
# Rendered by hpc-offload for ml/train; runtime: apptainer.
# Environment values reach this job from the scheduler, never from this file.
apptainer exec --nv --pwd=/workspace docker://nvcr.io/nvidia/pytorch:24.01-py3 python train.py --epochs 10
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
