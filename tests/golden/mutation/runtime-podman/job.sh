#!/bin/bash
# Rendered by hpc-offload for default/rt-podman; runtime: podman.
# Environment values reach this job from the scheduler, never from this file.
podman run --rm --network=host --env GREETING --env TOKEN '--workdir=/tmp/work dir' '--entrypoint=["python3"]' python:3.11-slim -c 'import sys; print('"'"'hello'"'"', sys.argv)'
status=$?
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
