#!/bin/bash
# Rendered by hpc-offload for default/pipeline; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec docker://openfoam/openfoam11-paraview510 simpleFoam -case /work/case
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
