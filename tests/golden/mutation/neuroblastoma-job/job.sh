#!/bin/bash
#SBATCH --partition=plgrid
#SBATCH --time=02:00:00
#SBATCH --cpus-per-task=4
#SBATCH --mem=8192M
# Rendered by hpc-offload for primage/neuroblastoma-xxxxx; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec docker://mbiesek/neuroblastoma:1.0 python3 /app/neuroblastoma.py --input input --output output --iterations 1000
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
