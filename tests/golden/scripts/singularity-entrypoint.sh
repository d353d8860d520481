#!/bin/bash
# Rendered by hpc-offload for research/train-x7k2p; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity run docker://ghcr.io/org/app:1.2 serve --port=8080
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
