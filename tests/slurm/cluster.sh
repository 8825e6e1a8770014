#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the test suite (root, Debian):
#   tests/slurm/cluster.sh start [--accounting]   # installs the Debian packages when missing
#   tests/slurm/cluster.sh stop                    # stops exactly the daemons `start` started
#   tests/slurm/cluster.sh status
# State (spool, logs, pid files, MariaDB data) lives in $RCKD_SLURM_STATE (default /tmp/rckd-slurm).
# slurm.conf must be /etc/slurm/slurm.conf: the jobs' inner srun runs with SLURM_* variables stripped
# (SLURM_CONF too) and finds the controller only there. `start` refuses to replace a slurm.conf it
# did not write, and `stop` removes only its own.
set -euo pipefail
STATE=${RCKD_SLURM_STATE:-/tmp/rckd-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by rckd tests/slurm/cluster.sh"
CLUSTER=rckd
PARTITION=debug

die() { echo "cluster.sh: $*" >&2; exit 1; }

install_packages() {
    local wanted=(munge slurmctld slurmd slurm-client) missing=()
    [ "${1:-}" = accounting ] && wanted+=(slurmdbd mariadb-server)
    for package in "${wanted[@]}"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" = 0 ] || die "missing Debian packages ${missing[*]}: run as root, or apt-get install them"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

remember() { echo "$1 $2" >>"$STATE/daemons"; }  # name pid-file

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "$what did not come up in ${seconds}s (logs in $STATE/log)"
}

own_file() { [ ! -e "$1" ] || head -n 1 "$1" | grep -qF "$MARK"; }

write_slurm_conf() {
    local accounting=$1 cpus memory
    cpus=$(nproc)
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    {
        echo "$MARK"
        echo "ClusterName=$CLUSTER"
        echo "SlurmctldHost=$(hostname -s)"
        echo "SlurmUser=root"
        echo "AuthType=auth/munge"
        echo "StateSaveLocation=$STATE/ctld"
        echo "SlurmdSpoolDir=$STATE/spool"
        echo "SlurmctldPidFile=$STATE/run/slurmctld.pid"
        echo "SlurmdPidFile=$STATE/run/slurmd.pid"
        echo "SlurmctldLogFile=$STATE/log/slurmctld.log"
        echo "SlurmdLogFile=$STATE/log/slurmd.log"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core_Memory"
        echo "MpiDefault=none"
        echo "ReturnToService=2"
        echo "SchedulerType=sched/backfill"
        echo "KillWait=10"
        echo "JobRequeue=1"
        if [ "$accounting" = yes ]; then
            echo "AccountingStorageType=accounting_storage/slurmdbd"
            echo "AccountingStorageHost=localhost"
            echo "JobAcctGatherType=jobacct_gather/linux"
        else
            echo "AccountingStorageType=accounting_storage/none"
            echo "JobAcctGatherType=jobacct_gather/none"
        fi
        echo "NodeName=$(hostname -s) CPUs=$cpus RealMemory=$memory State=UNKNOWN"
        echo "PartitionName=$PARTITION Nodes=$(hostname -s) Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF"
}

start_accounting() {
    mkdir -p "$STATE/mysql" "$STATE/run/mysqld"
    chown -R mysql:mysql "$STATE/mysql" "$STATE/run/mysqld"
    if [ ! -d "$STATE/mysql/mysql" ]; then
        mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
            >"$STATE/log/mariadb-install.log" 2>&1
    fi
    local socket="$STATE/run/mysqld/mysqld.sock"
    runuser -u mysql -- mariadbd --datadir="$STATE/mysql" --socket="$socket" --skip-networking=0 \
        --bind-address=127.0.0.1 --port=3306 --pid-file="$STATE/run/mysqld/mysqld.pid" \
        --log-error="$STATE/log/mariadb.log" </dev/null >>"$STATE/log/mariadb.out" 2>&1 &
    remember mariadb "$STATE/run/mysqld/mysqld.pid"
    wait_for 60 MariaDB mariadb --socket="$socket" -e "select 1"
    mariadb --socket="$socket" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'rckd';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    own_file "$DBD_CONF" || die "$DBD_CONF exists and was not written by this script; not touching it"
    {
        echo "$MARK"
        echo "AuthType=auth/munge"
        echo "DbdHost=localhost"
        echo "SlurmUser=root"
        echo "PidFile=$STATE/run/slurmdbd.pid"
        echo "LogFile=$STATE/log/slurmdbd.log"
        echo "StorageType=accounting_storage/mysql"
        echo "StorageHost=127.0.0.1"  # TCP: the socket is in the state directory
        echo "StoragePort=3306"
        echo "StorageUser=slurm"
        echo "StoragePass=rckd"
        echo "StorageLoc=slurm_acct_db"
    } >"$DBD_CONF"
    chmod 600 "$DBD_CONF"
    slurmdbd
    remember slurmdbd "$STATE/run/slurmdbd.pid"
    wait_for 60 slurmdbd sacctmgr -n list cluster
}

start() {
    local accounting=no
    [ "${1:-}" = --accounting ] && accounting=yes
    [ -e "$STATE/daemons" ] && die "a cluster is already recorded in $STATE/daemons; run stop first"
    install_packages "$([ $accounting = yes ] && echo accounting)"
    own_file "$CONF" || die "$CONF exists and was not written by this script; not touching it"
    mkdir -p "$STATE"/{ctld,spool,run,log,munge} /run/munge
    : >"$STATE/daemons"
    chown munge:munge /run/munge "$STATE/munge"
    if ! pgrep -x munged >/dev/null; then
        [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid"
        remember munged "$STATE/munge/munged.pid"
    fi
    wait_for 20 munge munge -n
    write_slurm_conf "$accounting"
    [ "$accounting" = yes ] && start_accounting
    slurmctld
    remember slurmctld "$STATE/run/slurmctld.pid"
    wait_for 30 slurmctld scontrol ping
    if [ "$accounting" = yes ]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
        sacctmgr -i add account rckd Cluster="$CLUSTER" >/dev/null 2>&1 || true
        sacctmgr -i add user root Account=rckd Cluster="$CLUSTER" >/dev/null 2>&1 || true
    fi
    slurmd
    remember slurmd "$STATE/run/slurmd.pid"
    wait_for 30 "the node" sh -c "sinfo -h -o %t | grep -qx idle"
    echo "cluster $CLUSTER up (accounting: $accounting); partition $PARTITION, $(nproc) CPUs, state in $STATE"
}

stop() {
    [ -e "$STATE/daemons" ] || { echo "no cluster recorded in $STATE"; return 0; }
    scancel --user="$(id -un)" >/dev/null 2>&1 || true
    tac "$STATE/daemons" | while read -r name pidfile; do
        [ -s "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        echo "stopped $name ($pid)"
    done
    for file in "$CONF" "$DBD_CONF"; do
        [ -e "$file" ] && own_file "$file" && rm -f "$file"
    done
    rm -rf "$STATE"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) sinfo && squeue ;;
    *) die "usage: $0 start [--accounting] | stop | status" ;;
esac
