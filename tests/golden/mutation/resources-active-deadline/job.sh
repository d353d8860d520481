#!/bin/bash
#SBATCH --time=01:30:00
#SBATCH --cpus-per-task=2
# Rendered by hpc-offload for default/resources-active-deadline; runtime: singularity.
# Environment values are in the 0600 env file beside this script, never here.
if [ -r /HPC_WORKDIR/hpco-POD_UID/job.env ]; then
  . /HPC_WORKDIR/hpco-POD_UID/job.env
fi
singularity exec docker://registry.example.org/sim:3 /opt/sim
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
