#!/bin/bash
#SBATCH --partition=plgrid
#SBATCH --account=plgresearch
#SBATCH --qos=normal
#SBATCH --time=04:00:00
#SBATCH --nodes=1
# Rendered by hpc-offload for research-genomics/defaults; runtime: apptainer.
# Environment values reach this job from the scheduler, never from this file.
apptainer exec docker://registry.example.org/bio/bwa:0.7 bwa mem ref.fa reads.fq
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
