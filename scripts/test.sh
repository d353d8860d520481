#!/usr/bin/env bash
# The test command (README, .ci/run): sets up a fresh machine as root and runs every test:
# lint and types, unit and golden tests, the connector against a real SLURM testbed, the
# webhook under a real gunicorn, and the end-to-end suite on a real local Kubernetes cluster.
source "$(dirname "$0")/lib.sh"
need_root
cd "$REPO"
ensure_python

step "lint (ruff) and types (mypy)"
ruff check .
mypy connector webhook certs

step "SLURM testbed (munge, slurmctld, slurmd, slurmrestd, sshd, charliecloud image)"
hpc-offload testbed up

step "local Kubernetes cluster (first run builds it from the Go modules: ~6 min)"
hpc-offload e2e cluster up
hpc-offload testbed up --listen 10.88.0.1   # pods reach the testbed at the bridge gateway
hpc-offload e2e cluster load-image
hpc-offload testbed clear   # no job left by an earlier run holds the node's CPUs

step "tests"
set +e
python -m pytest -ra --strict-markers -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "error: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"
