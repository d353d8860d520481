#!/bin/bash
#SBATCH --cpus-per-task=8
#SBATCH --mem=32768M
#SBATCH --gres=gpu:2
# Rendered by hpc-offload for research/train-x7k2p; runtime: enroot.
# Environment values reach this job from the scheduler, never from this file.
srun --container-image=nvcr.io/nvidia/pytorch:24.01-py3 --container-env=WANDB_KEY -- python train.py
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
