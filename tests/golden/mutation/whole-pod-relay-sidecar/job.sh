#!/bin/bash
#SBATCH --time=01:00:00
#SBATCH --cpus-per-task=4
#SBATCH --mem=8192M
#SBATCH --gres=gpu:1
# Rendered by hpc-offload for default/train-with-shipper-xxxxx: the whole pod (2 containers) as one job; runtime: apptainer.
# Environment values reach this job from the scheduler, never from this file.
hpco_dir=/HPC_WORKDIR/hpco-POD_UID
# Volumes: emptyDirs are made here; the others were uploaded (0600) before submission.
mkdir -p -m 700 -- "$hpco_dir/volumes/logs" || exit 1
# Each container: its own variables, volumes, image and command.
hpco_part_0() {  # sidecar container shipper
  export SINK="${HPCO_P0_SINK}"
  unset HPCO_P0_SINK
  exec -- apptainer run --nv --bind=/HPC_WORKDIR/hpco-POD_UID/volumes/logs:/logs:ro docker://ghcr.io/org/shipper:2 --follow /logs/train.log
}
hpco_part_1() {  # app container train
  unset HPCO_P0_SINK
  exec -- apptainer exec --nv --bind=/HPC_WORKDIR/hpco-POD_UID/volumes/logs:/logs docker://ghcr.io/org/train:1.4 python train.py --log=/logs/train.log
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
  # native sidecar shipper: runs beside what follows, stopped after the app containers
  hpco_run shipper hpco_part_0
  hpco_sidecars="$hpco_last $hpco_sidecars"
  if [ -n "$hpco_stopping" ]; then hpco_stop; return 143; fi
  # the app containers, concurrently
  hpco_run train hpco_part_1
  hpco_apps="$hpco_apps $hpco_last"
  for p in $hpco_apps; do hpco_wait "$p"; s=$?; [ "$code" -ne 0 ] || code=$s; done
  hpco_stop
  return "$code"
}
hpco_pod &
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
trap 'kill -TERM "$hpco_pid" 2>/dev/null' TERM
hpco_wait "$hpco_pid"
status=$?
[ -n "$hpco_watch" ] && kill "$hpco_watch" 2>/dev/null
# the pod is gone: so are its volumes (and the copies of its ConfigMaps and Secrets)
rm -rf -- "$hpco_dir/volumes"
if [ -e /HPC_WORKDIR/hpco-POD_UID/orphaned ]; then status=208; fi
printf '%s\n' "$status" > /HPC_WORKDIR/hpco-POD_UID/exit-status
exit "$status"
