#!/bin/bash
# Rendered by hpc-offload for default/rt-charliecloud; runtime: charliecloud.
# Environment values reach this job from the scheduler, never from this file.
export USER="${USER:-$(id -un)}"  # ch-run refuses to start without it
ch-run '--cd=/tmp/work dir' /scratch/images/python-3.11 -- python3 -c 'import sys; print('"'"'hello'"'"', sys.argv)'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
