#!/bin/bash
# Rendered by hpc-offload for default/rt-enroot; runtime: enroot.
# Environment values reach this job from the scheduler, never from this file.
srun --container-image=python:3.11-slim --container-env=GREETING,TOKEN '--container-workdir=/tmp/work dir' -- python3 -c 'import sys; print('"'"'hello'"'"', sys.argv)'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
