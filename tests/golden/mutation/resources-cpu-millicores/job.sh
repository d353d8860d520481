#!/bin/bash
#SBATCH --cpus-per-task=1
# Rendered by hpc-offload for default/resources-cpu-millicores; runtime: singularity.
# Environment values reach this job from the scheduler, never from this file.
singularity exec docker://registry.example.org/sim:3 /opt/sim &
hpco_pid=$!
# Dead man's switch: ends the payload (exit 208) once the heartbeat file is stale.
hpco_watch=
if [ -f /HPC_WORKDIR/hpco-POD_UID/heartbeat ]; then (
  trap 'exit 0' TERM
  read -r limit < /HPC_WORKDIR/hpco-POD_UID/heartbeat; [[ "$limit" =~ ^[0-9]+$ ]] || limit=600
  every=$(( limit / 4 )); (( every > 60 )) && every=60; (( every > 0 )) || every=1
  printf -v now '%(%s)T' -1
  quiet=$(( now - $(stat -c %Y -- /HPC_WORKDIR/hpco-POD_UID/heartbeat 2>/dev/null || echo "$now") ))
  exec 9<> <(:); : > /HPC_WORKDIR/hpco-POD_UID/heartbeat.seen
  while kill -0 "$hpco_pid" 2>/dev/null; do
    if (( quiet > limit )); then
      echo "hpc-offload: nobody followed this job for ${quiet}s (its pod is gone): ending it" >&2
      : > /HPC_WORKDIR/hpco-POD_UID/orphaned; kill -TERM "$hpco_pid"; read -r -t 10 -u 9; kill -KILL "$hpco_pid" 2>/dev/null; exit 0
    fi
    read -r -t "$every" -u 9
    if [[ /HPC_WORKDIR/hpco-POD_UID/heartbeat -nt /HPC_WORKDIR/hpco-POD_UID/heartbeat.seen ]]; then quiet=0; else quiet=$(( quiet + every )); fi
    : > /HPC_WORKDIR/hpco-POD_UID/heartbeat.seen
  done
) & hpco_watch=$!; fi
wait "$hpco_pid"
status=$?
[ -n "$hpco_watch" ] && kill "$hpco_watch" 2>/dev/null
if [ -e /HPC_WORKDIR/hpco-POD_UID/orphaned ]; then status=208; fi
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
