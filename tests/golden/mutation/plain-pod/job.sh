#!/bin/bash
# Rendered by hpc-offload for default/hello; runtime: singularity.
# Environment values are in the 0600 env file beside this script, never here.
if [ -r /HPC_WORKDIR/hpco-POD_UID/job.env ]; then
  . /HPC_WORKDIR/hpco-POD_UID/job.env
fi
singularity exec docker://busybox:1.36 echo 'hello from SLURM'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
