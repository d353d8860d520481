#!/bin/bash
# Rendered by hpc-offload for research/train-x7k2p; runtime: charliecloud.
# Environment values reach this job from the scheduler, never from this file.
export USER="${USER:-$(id -un)}"  # ch-run refuses to start without it
ch-run --cd=/tmp /shared/ch/python3 -- python3 -c 'import sys; print(sys.version)'
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
