#!/bin/bash
#SBATCH --gres=gpu:2
# Rendered by hpc-offload for research/train-x7k2p; runtime: podman.
# Environment values reach this job from the scheduler, never from this file.
podman run --rm --network=host --device=nvidia.com/gpu=all '--entrypoint=["python3"]' docker.io/library/python:3.11 train.py
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
