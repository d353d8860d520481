#!/bin/bash
# Rendered by hpc-offload for default/hello; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec docker://busybox:1.36 echo 'hello from SLURM'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
