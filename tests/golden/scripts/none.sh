#!/bin/bash
# Rendered by hpc-offload for research/train-x7k2p; runtime: none.
# Environment values are in the 0600 env file beside this script, never here.
if [ -r /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/job.env ]; then
  . /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/job.env
fi
cd /scratch/alice || exit 1
bash -c 'echo $(hostname) `date`; exit 3'
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
