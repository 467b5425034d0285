#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests: munged + slurmctld + slurmd, no systemd, no accounting.
#
#   source .ci/local_slurm.sh start DIR   # installs slurm-wlm and munge (Debian) if missing, starts the daemons,
#                                         # exports SLURM_CONF=DIR/slurm.conf; waits until the node is idle
#   bash .ci/local_slurm.sh stop DIR      # stops the daemons it started, by the PIDs it wrote in DIR/pids
#
# proctrack/linuxproc and task/none (no cgroups), accounting_storage/none; the node is this machine's short hostname
# with all its CPUs. Jobs run as the submitting user, on the same filesystem (submitit's folders need no sharing).
set -euo pipefail

_slurm_start() {
  local dir; dir="$(mkdir -p "$1" && cd "$1" && pwd)"
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  mkdir -p "$dir"/{state,spool,munge,munge-key} && chmod 755 "$dir/munge" && chmod 700 "$dir/munge-key"
  : > "$dir/pids"
  local key="$dir/munge-key/munge.key"
  [ -f "$key" ] || { head -c 1024 /dev/urandom > "$key" && chmod 400 "$key"; }
  munged --foreground --force --key-file="$key" --socket="$dir/munge/socket" --pid-file="$dir/munge/munged.pid" \
    --seed-file="$dir/munge/seed" --log-file="$dir/munged.log" > "$dir/munged.out" 2>&1 &
  echo $! >> "$dir/pids"
  local host cpus mem
  host="$(hostname -s)"; cpus="$(nproc)"; mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  cat > "$dir/slurm.conf" <<CONF
ClusterName=r1jax-local
SlurmctldHost=$host
SlurmUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldPort=${R1JAX_SLURMCTLD_PORT:-6817}
SlurmdPort=${R1JAX_SLURMD_PORT:-6818}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  export SLURM_CONF="$dir/slurm.conf"
  for _ in $(seq 50); do [ -S "$dir/munge/socket" ] && break; sleep 0.1; done
  slurmctld -D -i -f "$SLURM_CONF" > "$dir/slurmctld.out" 2>&1 &
  echo $! >> "$dir/pids"
  slurmd -D -f "$SLURM_CONF" > "$dir/slurmd.out" 2>&1 &
  echo $! >> "$dir/pids"
  for _ in $(seq 120); do
    if [ "$(sinfo -h -o %t 2>/dev/null | head -1)" = "idle" ]; then
      echo "local SLURM up: node $host, $cpus CPUs, SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "local SLURM did not come up; logs in $dir:" >&2
  tail -n 20 "$dir"/slurmctld.log "$dir"/slurmd.log "$dir"/*.out >&2 || true
  _slurm_stop "$dir"
  return 1
}

_slurm_stop() {
  local dir="$1"
  [ -f "$dir/pids" ] || return 0
  while read -r pid; do kill "$pid" 2>/dev/null || true; done < <(tac "$dir/pids")
  rm -f "$dir/pids"
}

case "${1:-}" in
  start) _slurm_start "${2:?usage: local_slurm.sh start DIR}" ;;
  stop) _slurm_stop "${2:?usage: local_slurm.sh stop DIR}" ;;
  *) echo "usage: local_slurm.sh start|stop DIR" >&2; exit 2 ;;
esac
