#!/bin/sh
# Entrypoint of the hpc-offload image: one image, three kinds of callers.
#  - The webhook sets `command: [hpc-connector, run, ...]`, which replaces this script.
#  - Admin manifests give `args: [hpc-offload, serve, ...]`: a program, run as given.
#  - The paper's Fig. 3 Job gives only the connector's arguments (`--backend ... simulate ...`):
#    they go to hpc-connector, as the paper's own image did (docs/paper-compatibility.md).
# `exec` keeps the program PID 1, so the preStop `kill -INT 1` and SIGTERM reach it.
set -eu
case "${1:-}" in
    "") exec hpc-offload --help ;;
    -* | run | simulate) exec hpc-connector "$@" ;;
    *) exec "$@" ;;
esac
