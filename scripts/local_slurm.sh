#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the tests and for trying the launcher: Debian's
# slurmctld + slurmd + munge, and MariaDB + slurmdbd so that `sacct` works (submitit reads job
# states from sacct; without it a cancelled or killed job is never reported and job.result() waits
# forever).
#   bash scripts/local_slurm.sh start    install what is missing, (re)configure, start what is not
#                                        running, wait until the node takes jobs; idempotent, about
#                                        a second when everything already runs
#   bash scripts/local_slurm.sh stop     cancel queued jobs, stop the daemons it started (pid files)
#   bash scripts/local_slurm.sh status   exit 0 when the controller answers and the node takes jobs
# Needs root and apt-get (Debian/Ubuntu) for `start`; no systemd needed.
# Environment: BRIDGESCOPE_SLURM_DIR (default /tmp/bridgescope-slurm) holds state, logs, pid files.
# Why things are set as they are (learned on 2-core Debian bookworm machines without systemd):
# - Debian's maintainer scripts cannot start services without systemd: daemons start by hand here.
# - No cgroups: proctrack/linuxproc and task/none; CPU and memory limits are not enforced.
# - batch_sched_delay=0: a trivial job's round trip drops from 3 s+ to about 1 s; sched_interval=2
#   and bf_interval=2: a job that becomes eligible (dependency met, requeue delay over) starts
#   within seconds instead of at the next 30-60 s scheduling pass.
# - kill_invalid_depend: a job whose dependency failed is cancelled instead of pending forever.
# - cred_expire=10: a requeued job (preemption, timeout) waits this long before it may start
#   again; the default, 120 s, would make the requeue test slow.
# - The controller and node are addressed as 127.0.0.1, so no DNS is needed.
set -euo pipefail

DIR=${BRIDGESCOPE_SLURM_DIR:-/tmp/bridgescope-slurm}
PIDS=$DIR/run
LOGS=$DIR/log
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
HOST=$(hostname -s)

say() { echo "[local_slurm $(date +%T)] $*" >&2; }
die() { echo "local_slurm: $*" >&2; exit 1; }

running() {  # running PIDFILE NAME: the pid file names a live process called NAME
  local pid
  [ -s "$1" ] || return 1
  pid=$(<"$1")
  [ -r "/proc/$pid/comm" ] && [ "$(<"/proc/$pid/comm")" = "$2" ]
}

wait_until() {  # wait_until SECONDS COMMAND...: poll every 0.2 s
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

stop_daemon() {  # stop_daemon PIDFILE NAME: TERM, then KILL after 15 s; only the named process
  local pid
  running "$1" "$2" || { rm -f "$1"; return 0; }
  pid=$(<"$1")
  kill -TERM "$pid"
  wait_until 15 bash -c "! [ -d /proc/$pid ]" || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
  say "stopped $2 ($pid)"
}

node_ready() { sinfo -h -n "$HOST" -o %t | grep -qxE 'idle|mix|alloc'; }

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get install -y -q --no-install-recommends "${missing[@]}")
  if ! "${apt[@]}" >"$LOGS/apt.log" 2>&1; then
    apt-get update -q >>"$LOGS/apt.log" 2>&1 || true
    "${apt[@]}" >>"$LOGS/apt.log" 2>&1 || die "apt-get install failed; see $LOGS/apt.log"
  fi
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || head -c 1024 /dev/urandom >/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  if ! running /run/munge/munged.pid munged; then
    say "starting munged"
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged  # forks; writes /run/munge/munged.pid
    wait_until 10 test -S /run/munge/munge.socket.2 || die "munged did not start"
  fi
  munge -n | unmunge >/dev/null || die "munge does not verify its own credential"
}

start_accounting() {  # start_accounting FRESH: FRESH=1 empties the accounting database first
  local sock=/run/mysqld/mysqld.sock
  install -d -o mysql -g mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  if ! running /run/mysqld/mariadb.pid mariadbd; then
    say "starting mariadbd (Unix socket only)"
    install -o mysql -g mysql -m 644 /dev/null "$LOGS/mariadb.err"
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket="$sock" \
      --pid-file=/run/mysqld/mariadb.pid --log-error="$LOGS/mariadb.err" \
      </dev/null >/dev/null 2>&1 &
    wait_until 60 mariadb-admin --socket="$sock" ping || die "mariadbd did not start"
  fi
  if [ "$1" = 1 ]; then
    # A controller without saved state numbers jobs from 1 again, and `sacct -j 1` would answer
    # with the finished job 1 of an earlier state: the launcher would take today's pending job
    # for done and submit its dependants without afterok. That database holds only this
    # harness's jobs.
    stop_daemon "$PIDS/slurmdbd.pid" slurmdbd
    say "new controller state: emptying the accounting database"
    mariadb --socket="$sock" -e "DROP DATABASE IF EXISTS slurm_acct_db;"
  fi
  # Local accounting database only; the password never leaves this machine.
  mariadb --socket="$sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  write_if_changed "$DBD_CONF" 600 <<EOF
# written by bridgescope scripts/local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$LOGS/slurmdbd.log
PidFile=$PIDS/slurmdbd.pid
EOF
  if [ "$CHANGED" = 1 ]; then stop_daemon "$PIDS/slurmdbd.pid" slurmdbd; fi
  if ! running "$PIDS/slurmdbd.pid" slurmdbd; then
    say "starting slurmdbd"
    /usr/sbin/slurmdbd
    wait_until 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819' || die "slurmdbd not listening"
  fi
}

CHANGED=0
write_if_changed() {  # write_if_changed FILE MODE < content: sets CHANGED=1 when it differs
  local new
  new=$(mktemp "$1.XXXXXX")
  cat >"$new"
  chmod "$2" "$new"
  if cmp -s "$new" "$1"; then rm -f "$new"; CHANGED=0; else mv "$new" "$1"; CHANGED=1; fi
}

write_slurm_conf() {
  local node mem
  node=$(slurmd -C | head -n 1)  # NodeName=<host> CPUs=.. ... RealMemory=<MiB>
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  node=${node/RealMemory=$mem/RealMemory=$((mem * 9 / 10))}
  write_if_changed "$CONF" 644 <<EOF
# written by bridgescope scripts/local_slurm.sh
ClusterName=bridgescope
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
DependencyParameters=kill_invalid_depend
ReturnToService=2
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=5
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  [ "$(id -u)" = 0 ] || die "start needs root (it installs packages and starts daemons)"
  local t0=$SECONDS
  mkdir -p "$PIDS" "$LOGS" "$DIR/state/ctld" "$DIR/state/d" /etc/slurm
  local fresh=0
  if ! running "$PIDS/slurmctld.pid" slurmctld && [ -z "$(ls -A "$DIR/state/ctld")" ]; then
    fresh=1
  fi
  install_packages
  start_munge
  start_accounting "$fresh"
  write_slurm_conf
  if [ "$CHANGED" = 1 ]; then  # daemons read slurm.conf at start only
    stop_daemon "$PIDS/slurmd.pid" slurmd
    stop_daemon "$PIDS/slurmctld.pid" slurmctld
  fi
  if ! running "$PIDS/slurmctld.pid" slurmctld; then
    say "starting slurmctld"
    /usr/sbin/slurmctld
  fi
  wait_until 30 scontrol ping || die "slurmctld does not answer; see $LOGS/slurmctld.log"
  if ! running "$PIDS/slurmd.pid" slurmd; then
    say "starting slurmd"
    /usr/sbin/slurmd
  fi
  if ! wait_until 30 node_ready; then
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    wait_until 30 node_ready || die "node $HOST does not take jobs; see $LOGS/"
  fi
  wait_until 30 sacct -n -X -S now || die "sacct does not answer; see $LOGS/slurmdbd.log"
  say "Slurm ready in $((SECONDS - t0)) s: $(sinfo -h -o '%P %D nodes %c CPUs %t')"
}

stop() {
  if running "$PIDS/slurmctld.pid" slurmctld && scontrol ping >/dev/null 2>&1; then
    local jobs
    jobs=$(squeue -h -o %A | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      say "cancelling jobs $jobs"
      # shellcheck disable=SC2086  # job ids are numbers from squeue
      scancel $jobs || true
      wait_until 20 bash -c '[ -z "$(squeue -h)" ]' || true
    fi
  fi
  stop_daemon "$PIDS/slurmd.pid" slurmd
  stop_daemon "$PIDS/slurmctld.pid" slurmctld
  stop_daemon "$PIDS/slurmdbd.pid" slurmdbd
  stop_daemon /run/mysqld/mariadb.pid mariadbd
  stop_daemon /run/munge/munged.pid munged
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) command -v scontrol >/dev/null && scontrol ping >/dev/null 2>&1 && node_ready ;;
  *)
    echo "usage: bash scripts/local_slurm.sh start|stop|status   (start and stop need root)" >&2
    exit 2
    ;;
esac
