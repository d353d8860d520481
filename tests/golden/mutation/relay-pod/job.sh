#!/bin/bash
# Rendered by hpc-offload for default/relayed; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec docker://python:3.12 python3 -c 'print('"'"'hi'"'"')'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
