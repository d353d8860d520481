#!/bin/bash
# Rendered by hpc-offload for default/workers-xxxxx; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity run docker://registry.example.org/worker:5 --queue jobs
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
