#!/bin/bash
#SBATCH --time=01:00:00
# Rendered by hpc-offload for ops/nightly-xxxxx; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec docker://registry.example.org/reports:1 make-report --yesterday
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
