#!/bin/bash
# Rendered by hpc-offload for default/rt-singularity; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec '--pwd=/tmp/work dir' docker://python:3.11-slim python3 -c 'import sys; print('"'"'hello'"'"', sys.argv)'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
