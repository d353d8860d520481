#!/bin/bash
#SBATCH --cpus-per-task=3
#SBATCH --mem=3072M
# Rendered by hpc-offload for default/resources-limits-only; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec docker://registry.example.org/sim:3 /opt/sim &
hpco_pid=$!
# Dead man's switch: ends the payload (exit 208) once the heartbeat file is stale.
hpco_watch=
if [ -f /HPC_WORKDIR/hpco-POD_UID/heartbeat ]; then (
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  limit=$(tr -cd 0-9 < /HPC_WORKDIR/hpco-POD_UID/heartbeat); limit=${limit:-600}
  every=$(( limit / 4 )); [ "$every" -gt 60 ] && every=60; [ "$every" -gt 0 ] || every=1
  while kill -0 "$hpco_pid" 2>/dev/null; do
    printf -v now '%(%s)T' -1
    age=$(( now - $(stat -c %Y -- /HPC_WORKDIR/hpco-POD_UID/heartbeat 2>/dev/null || echo "$now") ))
    if [ "$age" -gt "$limit" ]; then
      echo "hpc-offload: nobody followed this job for ${age}s (its pod is gone): ending it" >&2
      : > /HPC_WORKDIR/hpco-POD_UID/orphaned; kill -TERM "$hpco_pid"; sleep 10; kill -KILL "$hpco_pid" 2>/dev/null; exit 0
    fi
    sleep "$every" & nap=$!; wait "$nap"
  done
) & hpco_watch=$!; fi
wait "$hpco_pid"
status=$?
[ -n "$hpco_watch" ] && kill "$hpco_watch" 2>/dev/null
if [ -e /HPC_WORKDIR/hpco-POD_UID/orphaned ]; then status=208; fi
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
