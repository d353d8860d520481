#!/bin/bash
# Rendered by hpc-offload for research/train-x7k2p; runtime: apptainer.
# Environment values reach this job from the scheduler, never from this file.
apptainer exec /shared/sif/py311.sif python3 -c 'print('"'"'it'"'"''"'"'s $HOME'"'"')'
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
