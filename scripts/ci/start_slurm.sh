#!/usr/bin/env bash
# Start (or stop) a throw-away single-node Slurm cluster on this machine, for CI.
#
#   scripts/ci/start_slurm.sh          # install slurm + munge if missing, start, wait until usable
#   scripts/ci/start_slurm.sh stop     # stop what "start" started and remove its state
#   scripts/ci/start_slurm.sh status   # print sinfo / squeue (exit 1 if the cluster does not answer)
#
# What "start" does, each step skipped when already done (so it is idempotent):
#   1. apt-get install slurmd slurmctld slurm-client munge (Debian's slurm-wlm without the GUI),
#      with service start-up disabled during the install (there is no systemd here).
#   2. Creates /etc/munge/munge.key if missing and starts munged as the munge user.
#   3. Writes /etc/slurm/slurm.conf for ONE node called "localhost" with the CPUs, sockets,
#      cores and RealMemory that `slurmd -C` reports, a partition "debug" (Default=YES),
#      select/cons_tres (CR_Core: memory is not a consumable, so jobs never wait for memory),
#      proctrack/linuxproc + task/none (no cgroups needed), no accounting, a text job-completion
#      log (the only job history without slurmdbd), and all state, spool, pid and log files under
#      $SLURM_CI_DIR. A slurm.conf that this script did not write is never overwritten.
#   4. Starts slurmctld and slurmd (daemon mode, SlurmUser=root), waits until `sinfo` shows the
#      node idle and `srun hostname` works.
#
# Environment:
#   SLURM_CI_DIR       state/log folder (default /tmp/bids_denoise_slurm)
#   SLURM_CI_TIMEOUT   seconds to wait for the node to become idle (default 60)
#   SLURM_CI_APT       set to 0 to never call apt-get (fail if Slurm is missing instead)
set -euo pipefail

SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/bids_denoise_slurm}
SLURM_CI_TIMEOUT=${SLURM_CI_TIMEOUT:-60}
SLURM_CI_APT=${SLURM_CI_APT:-1}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# bids_denoise-ci: written by scripts/ci/start_slurm.sh"
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET_DIR=/run/munge

log() { printf '[start_slurm %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "run as root or install sudo"
    SUDO=(sudo -n)
fi

# ----------------------------------------------------------------------------- helpers
ours() { [[ -f $CONF ]] && grep -qF "$MARKER" "$CONF"; }

node_state() { sinfo -h -N -n localhost -o '%T' 2>/dev/null | head -n1 || true; }

cluster_answers() { timeout 10 sinfo -h >/dev/null 2>&1; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Slurm and munge are installed ($(slurmctld -V))"
        return
    fi
    [[ $SLURM_CI_APT == 1 ]] || die "missing ${missing[*]} and SLURM_CI_APT=0"
    log "installing ${missing[*]} with apt-get"
    # Keep the packages' init scripts from starting daemons during the install.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod +x "$policy"
        added_policy=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >"$SLURM_CI_DIR/apt.log" 2>&1; then
        "${SUDO[@]}" apt-get update -q >>"$SLURM_CI_DIR/apt.log" 2>&1 || true
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$SLURM_CI_DIR/apt.log" 2>&1 || rc=$?
    fi
    [[ $added_policy == 1 ]] && "${SUDO[@]}" rm -f "$policy"
    [[ $rc == 0 ]] || { tail -n 30 "$SLURM_CI_DIR/apt.log" >&2; die "apt-get install failed"; }
    log "installed $(slurmctld -V)"
}

start_munge() {
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        "${SUDO[@]}" mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            "${SUDO[@]}" mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            "${SUDO[@]}" dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
    fi
    "${SUDO[@]}" chown munge:munge /etc/munge "$MUNGE_KEY"
    "${SUDO[@]}" chmod 0700 /etc/munge
    "${SUDO[@]}" chmod 0400 "$MUNGE_KEY"
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged is running"
        return
    fi
    log "starting munged"
    "${SUDO[@]}" mkdir -p "$MUNGE_SOCKET_DIR" /var/lib/munge /var/log/munge
    "${SUDO[@]}" chown munge:munge "$MUNGE_SOCKET_DIR" /var/lib/munge /var/log/munge
    "${SUDO[@]}" chmod 0755 "$MUNGE_SOCKET_DIR"
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u munge -- /usr/sbin/munged
    else
        sudo -n -u munge /usr/sbin/munged
    fi
    touch "$SLURM_CI_DIR/started-munged"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

write_conf() {
    if [[ -f $CONF ]] && ! ours; then
        die "$CONF exists and was not written by this script; refusing to overwrite a real cluster's configuration"
    fi
    # `slurmd -C` prints e.g.: NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=23999
    local hw cpus sockets cores threads mem
    hw=$(slurmd -C | head -n1)
    field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
    cpus=$(field CPUs) sockets=$(field SocketsPerBoard) cores=$(field CoresPerSocket)
    threads=$(field ThreadsPerCore) mem=$(field RealMemory)
    [[ -n $cpus && -n $mem ]] || die "cannot parse 'slurmd -C': $hw"
    log "node resources from slurmd -C: CPUs=$cpus Sockets=$sockets Cores=$cores Threads=$threads RealMemory=${mem}MB"
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
$MARKER
# A single-node test cluster; stop it with: scripts/ci/start_slurm.sh stop
ClusterName=bidsdenoiseci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_CI_DIR/log/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Jobs whose dependency can never be satisfied (an upstream job failed) are cancelled, not left pending.
SchedulerParameters=kill_invalid_depend
ReturnToService=2
# Keep finished jobs visible to squeue/scontrol for an hour (there is no accounting database).
MinJobAge=3600
InactiveLimit=0
KillWait=10
SlurmctldTimeout=60
SlurmdTimeout=120
StateSaveLocation=$SLURM_CI_DIR/state
SlurmdSpoolDir=$SLURM_CI_DIR/spool
SlurmctldPidFile=$SLURM_CI_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_CI_DIR/run/slurmd.pid
SlurmctldLogFile=$SLURM_CI_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_CI_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    "${SUDO[@]}" mkdir -p "$CONF_DIR"
    if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1  # unchanged
    fi
    "${SUDO[@]}" install -m 0644 "$tmp" "$CONF"
    rm -f "$tmp"
    log "wrote $CONF"
    return 0
}

start_daemons() {
    mkdir -p "$SLURM_CI_DIR"/{state,spool,run,log}
    if ! pid_alive "$SLURM_CI_DIR/run/slurmctld.pid"; then
        log "starting slurmctld (log: $SLURM_CI_DIR/log/slurmctld.log)"
        # -c: start without the jobs of an earlier run; -i: ignore stale state files
        "${SUDO[@]}" slurmctld -c -i
        touch "$SLURM_CI_DIR/started-slurmctld"
    fi
    if ! pid_alive "$SLURM_CI_DIR/run/slurmd.pid"; then
        log "starting slurmd -N localhost (log: $SLURM_CI_DIR/log/slurmd.log)"
        "${SUDO[@]}" slurmd -N localhost
        touch "$SLURM_CI_DIR/started-slurmd"
    fi
}

wait_idle() {
    local state="" deadline=$((SECONDS + SLURM_CI_TIMEOUT))
    while ((SECONDS < deadline)); do
        state=$(node_state)
        case $state in
            idle* | mixed* | allocated* | completing*) break ;;
            down* | drain* | fail*)
                # ReturnToService=2 brings a registered node back; nudge it in case it came up DOWN.
                scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    [[ $state == idle* || $state == mixed* || $state == allocated* || $state == completing* ]] || {
        tail -n 20 "$SLURM_CI_DIR/log/slurmctld.log" "$SLURM_CI_DIR/log/slurmd.log" >&2 || true
        die "node localhost is '${state:-not answering}' after ${SLURM_CI_TIMEOUT}s"
    }
    log "node localhost is $state"
}

do_start() {
    local t0=$SECONDS
    mkdir -p "$SLURM_CI_DIR"/{state,spool,run,log}
    install_packages
    start_munge
    if write_conf; then
        # new or changed configuration: (re)start the daemons we own
        if pid_alive "$SLURM_CI_DIR/run/slurmctld.pid" || pid_alive "$SLURM_CI_DIR/run/slurmd.pid"; then
            log "configuration changed: restarting the daemons"
            stop_daemons
        fi
    fi
    start_daemons
    wait_idle
    sinfo
    local host
    host=$(timeout 60 srun -N1 -n1 -t 1 hostname) || die "srun hostname failed"
    log "srun hostname -> $host"
    log "cluster ready in $((SECONDS - t0)) s"
}

stop_daemons() {
    local f pid
    if pid_alive "$SLURM_CI_DIR/run/slurmctld.pid" || pid_alive "$SLURM_CI_DIR/run/slurmd.pid"; then
        scontrol shutdown >/dev/null 2>&1 || true   # stops slurmctld and every slurmd
    fi
    for f in slurmctld slurmd; do
        for _ in $(seq 50); do
            pid_alive "$SLURM_CI_DIR/run/$f.pid" || break
            sleep 0.2
        done
        if pid_alive "$SLURM_CI_DIR/run/$f.pid"; then
            pid=$(cat "$SLURM_CI_DIR/run/$f.pid")
            log "killing $f (pid $pid)"
            "${SUDO[@]}" kill "$pid" || true
        fi
        rm -f "$SLURM_CI_DIR/started-$f"
    done
}

do_stop() {
    log "stopping the test cluster"
    stop_daemons
    if [[ -f $SLURM_CI_DIR/started-munged && -f $MUNGE_SOCKET_DIR/munged.pid ]]; then
        log "stopping munged (pid $(cat "$MUNGE_SOCKET_DIR/munged.pid"))"
        "${SUDO[@]}" kill "$(cat "$MUNGE_SOCKET_DIR/munged.pid")" || true
    fi
    if ours; then
        "${SUDO[@]}" rm -f "$CONF"
    fi
    "${SUDO[@]}" rm -rf "$SLURM_CI_DIR"
    log "stopped; $CONF and $SLURM_CI_DIR removed"
}

case ${1:-start} in
    start) do_start ;;
    stop) do_stop ;;
    status)
        cluster_answers || { echo "the Slurm cluster does not answer"; exit 1; }
        sinfo
        squeue ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 64 ;;
esac
