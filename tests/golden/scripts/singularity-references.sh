#!/bin/bash
# Rendered by hpc-offload for research/train-x7k2p; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec --pwd=- docker://python:3.11 python3 -c 'import sys; print(sys.argv)' "${GREETING}" pre-"${GREETING}"-post '$(GREETING)'
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
