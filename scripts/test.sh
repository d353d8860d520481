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

# pytest, whose "no tests collected" (5) is a failure here; its code in PYTEST_RC
run_pytest() {
  set +e
  python -m pytest -ra --strict-markers -p no:cacheprovider "$@"
  PYTEST_RC=$?
  set -e
  if [ "$PYTEST_RC" = 5 ]; then
    echo "error: pytest collected no tests ($*); that is a failure here" >&2
    PYTEST_RC=1
  fi
}

step "tests"
# With arguments (a selection of yours): one pytest run, as asked.
if [ "$#" -gt 0 ]; then
  run_pytest "$@"
  exit "$PYTEST_RC"
fi
# Without: every test. Most of the suite waits on schedulers and pods, not on the CPU, so it
# runs in lanes at once, each a pytest session of its own over its own tests: the cluster (e2e
# and the API-server tests), the managers' contract in two halves, relay and whole pods, and
# the rest. Tests that change the testbed for everyone beside them (marker `exclusive`: they
# cut every SSH session, stop sshd or Grid Engine, cancel every job) run first, alone.
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/hpc-offload-tests.XXXXXX")"
run_pytest -m exclusive tests
rc=$PYTEST_RC
OWN=(tests/test_security_apiserver.py tests/contract tests/test_relay.py tests/test_relay_orphans.py tests/test_relay_deletes.py tests/test_relay_kills.py
     tests/test_follower.py tests/test_whole_pod.py)
lane_args() {  # the pytest arguments of lane $1, in LANE
  case "$1" in
    cluster)  LANE=(e2e tests/test_security_apiserver.py) ;;
    contract-ssh) LANE=(tests/contract -k ssh) ;;  # targets over SSH ...
    contract-other) LANE=(tests/contract -k "not ssh") ;;  # ... and the local, REST ones
    relay-wholepod) LANE=(tests/test_relay.py tests/test_relay_orphans.py tests/test_relay_deletes.py tests/test_relay_kills.py tests/test_follower.py tests/test_whole_pod.py) ;;
    rest) LANE=(tests "${OWN[@]/#/--ignore=}") ;;
  esac
}
NAMES=(cluster contract-ssh contract-other relay-wholepod rest)
for lane in "${NAMES[@]}"; do
  lane_args "$lane"
  (run_pytest -m "not exclusive" "${LANE[@]}" >"$LOGS/$lane.log" 2>&1; echo "$PYTEST_RC" >"$LOGS/$lane.rc") &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do  # a line a minute, so a long run shows it is alive
  sleep 60
  for lane in "${NAMES[@]}"; do
    printf '[%s] %s\n' "$lane" "$(tail -c 300 "$LOGS/$lane.log" | tr '\r' '\n' | grep -v '^$' | tail -1)"
  done
done
wait
for lane in "${NAMES[@]}"; do
  lane_args "$lane"
  step "tests: lane $lane (${LANE[*]})"
  cat "$LOGS/$lane.log"
  [ "$(cat "$LOGS/$lane.rc")" = 0 ] || rc=1
done
step "tests: summary"
grep -hE '^(FAILED|ERROR) ' "$LOGS"/*.log || true
for lane in "${NAMES[@]}"; do
  printf '%-15s %s\n' "$lane" "$(grep -E '^=+ .*(passed|failed|error).* =+$' "$LOGS/$lane.log" | tail -1)"
done
exit "$rc"
