#!/bin/bash
#SBATCH --partition=plgrid-long
#SBATCH --account=plglab
#SBATCH --qos=high
#SBATCH --time=1-12:00:00
#SBATCH --nodes=2
#SBATCH --ntasks=8
#SBATCH --gres=gpu:1
#SBATCH --constraint=skylake
#SBATCH --exclusive
#SBATCH --mail-type=END
# Rendered by hpc-offload for lab/everything; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
srun --kill-on-bad-exit=1 singularity exec --nv docker://registry.example.org/lab/app:2.0 app --config params.json
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
