#!/bin/bash
# Rendered by hpc-offload for research/train-x7k2p; runtime: charliecloud.
# Environment values are in the 0600 env file beside this script, never here.
if [ -r /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/job.env ]; then
  . /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/job.env
fi
export USER="${USER:-$(id -un)}"  # ch-run refuses to start without it
ch-run --cd=/tmp /shared/ch/python3 -- python3 -c 'import sys; print(sys.version)'
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
