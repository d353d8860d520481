#!/bin/bash
#SBATCH --time=01:00:00
#SBATCH --cpus-per-task=2
#SBATCH --mem=2048M
# Rendered by hpc-offload for research/pipeline-x7k2p: the whole pod (4 containers) as one job; runtime: none.
# Environment values reach this job from the scheduler, never from this file.
hpco_dir=/home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001
# Volumes: emptyDirs are made here; the others were uploaded (0600) before submission.
mkdir -p -m 700 -- "$hpco_dir/volumes/data" || exit 1
mkdir -p -- "$hpco_dir/volumes/"data/logs || exit 1
# Each container: its own variables, volumes, image and command.
hpco_part_0() {  # init container fetch
  unset HPCO_P1_MODE HPCO_P1_TOKEN HPCO_P3_LEVEL
  export HPCO_VOLUME_DATA=/home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/volumes/data  # runtime none binds nothing
  exec -- sh -c 'echo input > /data/input'
}
hpco_part_1() {  # app container train
  export MODE="${HPCO_P1_MODE}"
  export TOKEN="${HPCO_P1_TOKEN}"
  unset HPCO_P1_MODE HPCO_P1_TOKEN HPCO_P3_LEVEL
  export HPCO_VOLUME_DATA=/home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/volumes/data  # runtime none binds nothing
  export HPCO_VOLUME_CONFIG=/home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/volumes/config  # runtime none binds nothing
  export HPCO_VOLUME_CREDS=/home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/volumes/creds  # runtime none binds nothing
  cd -- /data || exit 1
  exec -- python3 train.py --mode="${MODE}"
}
hpco_part_2() {  # sidecar container logs
  unset HPCO_P1_MODE HPCO_P1_TOKEN HPCO_P3_LEVEL
  export HPCO_VOLUME_DATA=/home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/volumes/data  # runtime none binds nothing
  exec -- sh -c 'tail -F /logs/train.log'
}
hpco_part_3() {  # app container report
  export LEVEL="${HPCO_P3_LEVEL}"
  unset HPCO_P1_MODE HPCO_P1_TOKEN HPCO_P3_LEVEL
  export HPCO_VOLUME_CONFIG=/home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/volumes/config  # runtime none binds nothing
  exec -- python3 -c 'print(open('"'"'/etc/app/settings.ini'"'"').read())'
}
hpco_wait() {  # the exit status of $1, however often a trapped signal cuts the wait short
  local s t
  while :; do wait "$1"; s=$?; kill -0 "$1" 2>/dev/null || break; done
  if [ "$s" -gt 128 ]; then wait "$1" 2>/dev/null; t=$?; [ "$t" = 127 ] || s=$t; fi
  return "$s"
}
hpco_run() {  # NAME FUNCTION: one container in the background, its output in its own files
  (  # and its exit status in part-NAME.exit the moment it ends
    p=
    trap '[ -n "$p" ] && kill -TERM "$p" 2>/dev/null' TERM
    "$2" >> "$hpco_dir/part-$1.out" 2>> "$hpco_dir/part-$1.err" &
    p=$!
    hpco_wait "$p"; s=$?
    printf '%s\n' "$s" > "$hpco_dir/part-$1.exit"
    exit "$s"
  ) &
  hpco_last=$!
  hpco_live="$hpco_live $hpco_last"
}
hpco_stop() {  # the started sidecars: SIGTERM, last started first, each waited for
  local p
  for p in $hpco_sidecars; do kill -TERM "$p" 2>/dev/null; hpco_wait "$p"; done
}
hpco_pod() {  # the pod's containers as Kubernetes runs them
  local s code=0 p
  hpco_live= hpco_sidecars= hpco_apps= hpco_stopping=
  trap 'hpco_stopping=1; kill -TERM $hpco_live 2>/dev/null' TERM
  # init container fetch: to completion; a failure ends the pod with its code
  hpco_run fetch hpco_part_0
  hpco_wait "$hpco_last"; s=$?
  if [ "$s" -ne 0 ] || [ -n "$hpco_stopping" ]; then hpco_stop; return $(( s ? s : 143 )); fi
  # native sidecar logs: runs beside what follows, stopped after the app containers
  hpco_run logs hpco_part_2
  hpco_sidecars="$hpco_last $hpco_sidecars"
  if [ -n "$hpco_stopping" ]; then hpco_stop; return 143; fi
  # the app containers, concurrently
  hpco_run train hpco_part_1
  hpco_apps="$hpco_apps $hpco_last"
  hpco_run report hpco_part_3
  hpco_apps="$hpco_apps $hpco_last"
  for p in $hpco_apps; do hpco_wait "$p"; s=$?; [ "$code" -ne 0 ] || code=$s; done
  hpco_stop
  return "$code"
}
hpco_pod &
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
trap 'kill -TERM "$hpco_pid" 2>/dev/null' TERM
hpco_wait "$hpco_pid"
status=$?
[ -n "$hpco_watch" ] && kill "$hpco_watch" 2>/dev/null
# the pod is gone: so are its volumes (and the copies of its ConfigMaps and Secrets)
rm -rf -- "$hpco_dir/volumes"
if [ -e /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/orphaned ]; then status=208; fi
printf '%s\n' "$status" > /home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001/exit-status
exit "$status"
