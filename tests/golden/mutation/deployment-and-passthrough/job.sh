#!/bin/bash
# Rendered by hpc-offload for default/workers-xxxxx; runtime: singularity.
# Environment values are in the 0600 env file beside this script, never here.
if [ -r /HPC_WORKDIR/hpco-POD_UID/job.env ]; then
  . /HPC_WORKDIR/hpco-POD_UID/job.env
fi
singularity run docker://registry.example.org/worker:5 --queue jobs
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
