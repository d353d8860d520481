#!/bin/bash
# Rendered by hpc-offload for default/rt-none; runtime: none.
# Environment values reach this job from the scheduler, never from this file.
cd -- '/tmp/work dir' || exit 1
python3 -c 'import sys; print('"'"'hello'"'"', sys.argv)'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
