#!/usr/bin/env bash
# Stop the daemons that start-local-slurm.sh started (pids recorded in /run/local-slurm).
# Daemons that were already running before start-local-slurm.sh are left alone.
# Set LOCAL_SLURM_CANCEL_JOBS=0 to skip cancelling queued/running jobs first.
# LOCAL_SLURM_STATE: the same directory as given to start-local-slurm.sh (default /run/local-slurm).
set -uo pipefail
STATE="${LOCAL_SLURM_STATE:-/run/local-slurm}"
log() { echo "[local-slurm] $*" >&2; }

if [ "${LOCAL_SLURM_CANCEL_JOBS:-1}" = 1 ] && [ -s "$STATE/slurmctld.pid" ]; then
  jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %A 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    log "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    sleep 1
  fi
fi

# slurmd first, then the controller, then munge (both slurm daemons need munge).
for d in slurmd slurmctld munged; do
  pf="$STATE/$d.pid"
  [ -s "$pf" ] || continue
  pid=$(cat "$pf")
  if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$d" ]; then
    log "stopping $d (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    if [ -d "/proc/$pid" ]; then log "$d (pid $pid) still alive, sending SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  else
    log "$d (pid $pid) not running"
  fi
  rm -f "$pf"
done
exit 0
