#!/bin/bash
#SBATCH --partition=plgrid
#SBATCH --account=plgresearch
#SBATCH --qos=normal
#SBATCH --time=04:00:00
# Rendered by hpc-offload for research-genomics/defaults; runtime: apptainer.
# Environment values are in the 0600 env file beside this script, never here.
if [ -r /HPC_WORKDIR/hpco-POD_UID/job.env ]; then
  . /HPC_WORKDIR/hpco-POD_UID/job.env
fi
apptainer exec docker://registry.example.org/bio/bwa:0.7 bwa mem ref.fa reads.fq
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
