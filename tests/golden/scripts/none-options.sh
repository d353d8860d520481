#!/bin/bash
# Rendered by hpc-offload for research/train-x7k2p; runtime: none.
# Environment values reach this job from the scheduler, never from this file.
cd -- ./- || exit 1
-c id
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
