#!/bin/bash
#SBATCH --gres=gpu:a100:2
# Rendered by hpc-offload for default/resources-gpus-annotation; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec --nv docker://registry.example.org/sim:3 /opt/sim
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
