#!/bin/bash
# Rendered by hpc-offload for default/rt-enroot; runtime: enroot.
# Environment values are in the 0600 env file beside this script, never here.
if [ -r /HPC_WORKDIR/hpco-POD_UID/job.env ]; then
  . /HPC_WORKDIR/hpco-POD_UID/job.env
fi
srun --container-image=python:3.11-slim --container-env=GREETING,TOKEN '--container-workdir=/tmp/work dir' python3 -c 'import sys; print('"'"'hello'"'"', sys.argv)'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
