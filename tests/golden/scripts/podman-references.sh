#!/bin/bash
# Rendered by hpc-offload for research/train-x7k2p; runtime: podman.
# Environment values reach this job from the scheduler, never from this file.
podman run --rm --network=host --env CONF --env TOOL --workdir=- --entrypoint="${TOOL}" docker.io/library/python:3.11 --config="${CONF}" '$(CONF)' '$(MISSING)' 'cost: $5 $(CONF' 'it'"'"'s '"${CONF}"
status=$?
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
