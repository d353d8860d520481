#!/bin/bash
# Rendered by hpc-offload for default/rt-apptainer; runtime: apptainer.
# Environment values reach this job from the scheduler, never from this file.
apptainer exec '--pwd=/tmp/work dir' /shared/sif/python-3.11.sif python3 -c 'import sys; print('"'"'hello'"'"', sys.argv)'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
