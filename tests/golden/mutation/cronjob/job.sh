#!/bin/bash
#SBATCH --time=60
# Rendered by hpc-offload for ops/nightly-xxxxx; runtime: singularity.
# Environment values are in the 0600 env file beside this script, never here.
if [ -r /HPC_WORKDIR/hpco-POD_UID/job.env ]; then
  . /HPC_WORKDIR/hpco-POD_UID/job.env
fi
singularity exec docker://registry.example.org/reports:1 make-report --yesterday
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
