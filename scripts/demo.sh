#!/usr/bin/env bash
# The demo (README): on a fresh machine, as root, start the real SLURM testbed and run a real
# job through the connector — its output streamed as it runs, its exit code mirrored.
source "$(dirname "$0")/lib.sh"
need_root
cd "$REPO"
ensure_python

step "SLURM testbed"
hpc-offload testbed up

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
hpc-offload testbed profile slurm-ssh --dir "$work/profile" >/dev/null
cat > "$work/job-spec.json" <<'JSON'
{"image": "python:3.11-slim",
 "command": ["python3", "-u", "-c",
   "import platform, time\nfor i in range(5):\n    print(f'step {i} on {platform.node()}'); time.sleep(1)\nraise SystemExit(3)"],
 "pod": {"namespace": "demo", "name": "hello-hpc", "uid": "UID"}}
JSON
sed -i "s/\"UID\"/\"demo-$(date +%s)\"/" "$work/job-spec.json"  # a new pod, a new job
rm -rf /var/tmp/hpc-offload-demo-state
step "hpc-connector run: submits over SSH, streams the job's output, mirrors its exit code (3)"
set +e
hpc-connector run --spec "$work/job-spec.json" --profile "$work/profile" \
  --state-dir /var/tmp/hpc-offload-demo-state --termination-log "$work/termination-log"
rc=$?
set -e
echo "connector exit code: $rc (the job's own)"
echo "termination message: $(cat "$work/termination-log")"
[ "$rc" = 3 ]
