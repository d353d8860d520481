#!/bin/bash
# Rendered by hpc-offload for default/rt-podman; runtime: podman.
# Environment values are in the 0600 env file beside this script, never here.
if [ -r /HPC_WORKDIR/hpco-POD_UID/job.env ]; then
  . /HPC_WORKDIR/hpco-POD_UID/job.env
fi
podman run --rm --network=host --env GREETING --env TOKEN --workdir '/tmp/work dir' --entrypoint '["python3", "-c"]' python:3.11-slim 'import sys; print('"'"'hello'"'"', sys.argv)'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
