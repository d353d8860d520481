#!/bin/sh
# Entrypoint of the hpc-offload image: one image, three kinds of callers.
#  - The webhook sets `command: [python3, -I, -m, connector.cli, run, ...]`, replacing this.
#  - Admin manifests give `args: [hpc-offload, serve, ...]`: a program, run as given.
#  - The paper's Fig. 3 Job gives only the connector's arguments (`--backend ... simulate ...`):
#    they go to the connector, as the paper's own image did (docs/paper-compatibility.md), run
#    as the webhook runs it: the image's python in isolated mode (-I: no PYTHON* variables).
# `exec` keeps the program PID 1, so the preStop `kill -INT 1` and SIGTERM reach it.
set -eu
case "${1:-}" in
    "") exec hpc-offload --help ;;
    -* | run | simulate | shell) exec "${HPC_OFFLOAD_PYTHON:-/opt/hpc-offload/bin/python3}" -I -m connector.cli "$@" ;;
    *) exec "$@" ;;
esac
