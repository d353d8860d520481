#!/bin/bash
# Rendered by hpc-offload for research/train-x7k2p; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity run docker://ghcr.io/org/app:1.2 serve --port=8080 &
hpco_pid=$!
# Dead man's switch: ends the payload (exit 208) once the heartbeat file is stale.
hpco_watch=
if [ -f /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/heartbeat ]; then (
  trap 'exit 0' TERM
  read -r limit < /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/heartbeat; [[ "$limit" =~ ^[0-9]+$ ]] || limit=600
  every=$(( limit / 4 )); (( every > 60 )) && every=60; (( every > 0 )) || every=1
  printf -v now '%(%s)T' -1
  quiet=$(( now - $(stat -c %Y -- /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/heartbeat 2>/dev/null || echo "$now") ))
  exec 9<> <(:); : > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/heartbeat.seen
  while kill -0 "$hpco_pid" 2>/dev/null; do
    if (( quiet > limit )); then
      echo "hpc-offload: nobody followed this job for ${quiet}s (its pod is gone): ending it" >&2
      : > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/orphaned; kill -TERM "$hpco_pid"; read -r -t 10 -u 9; kill -KILL "$hpco_pid" 2>/dev/null; exit 0
    fi
    read -r -t "$every" -u 9
    if [[ /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/heartbeat -nt /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/heartbeat.seen ]]; then quiet=0; else quiet=$(( quiet + every )); fi
    : > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/heartbeat.seen
  done
) & hpco_watch=$!; fi
wait "$hpco_pid"
status=$?
[ -n "$hpco_watch" ] && kill "$hpco_watch" 2>/dev/null
if [ -e /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/orphaned ]; then status=208; fi
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
