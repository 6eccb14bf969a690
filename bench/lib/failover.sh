# shellcheck shell=bash
# The failover section of bench/compare.sh: a live/backup pair per target, the live
# member killed with SIGKILL again and again under load by `duomq-bench failover`,
# which restarts it with the member's start script.
#
# Each member gets a directory under $WORK/failover-TARGET/NAME with a start.sh that
# starts the broker in the background (setsid, so the shell that runs it can return),
# appends to the member's log and writes its pid to NAME/pid. compare.sh starts the
# members with it, and duomq-bench runs it again after each kill. Sourced by
# compare.sh after brokers.sh; uses its WORK, LOG_DIR, LIB_DIR, DUOMQ_BROKER, BENCH,
# START_TIMEOUT, STOP_TIMEOUT, FAILOVER_KILLS, FAILOVER_EVERY and OUT.

FAILOVER_DIR=''
FAILOVER_MEMBERS=()

# The reconnect policy of every failover client, as in duomq's own replication tests.
FAILOVER_QUERY='initialReconnectDelay=10ms&maxReconnectDelay=200ms&maxReconnectAttempts=-1'

# write_start_script DIR LOG CMD...: DIR/start.sh starts CMD in the background.
# write_activemq_instance BASE CONFIG STOMP_PORT LOG [-Dname=value...]: an ActiveMQ
# instance in BASE (conf, data, tmp) with bench/lib/CONFIG as its activemq.xml, listening
# for STOMP on STOMP_PORT, and BASE/start.sh that starts it logging to LOG; the extra
# system properties go before -jar, with the others.
write_activemq_instance() {
    local base=$1 config=$2 stomp=$3 log=$4
    shift 4
    mkdir -p "$base/conf" "$base/data" "$base/tmp"
    cp "$LIB_DIR/$config" "$base/conf/activemq.xml"
    cp "$LIB_DIR/activemq-log4j.properties" "$base/conf/log4j.properties"
    activemq_command "$base" "$stomp" "$base/conf/activemq.xml"
    local cmd=("${ACTIVEMQ_CMD[@]:0:${#ACTIVEMQ_CMD[@]}-4}" "$@" "${ACTIVEMQ_CMD[@]: -4}")
    write_start_script "$base" "$log" "${cmd[@]}"
}

write_start_script() {
    local dir=$1 log=$2
    shift 2
    {
        echo '#!/bin/sh'
        echo '# Written by bench/compare.sh: starts one failover member in the background.'
        printf 'cd %q || exit 1\n' "$dir"
        printf 'setsid'
        printf ' %q' "$@"
        printf ' </dev/null >>%q 2>&1 &\n' "$log"
        printf 'echo $! >%q\n' "$dir/pid"
    } >"$dir/start.sh"
    chmod +x "$dir/start.sh"
}

member_pid() { cat "$FAILOVER_DIR/$1/pid" 2>/dev/null; }

# shellcheck disable=SC2317 # called through RUNNING_STOP
stop_pair() {
    local m pid
    for m in "${FAILOVER_MEMBERS[@]}"; do
        pid=$(member_pid "$m") || continue
        kill -TERM "$pid" 2>/dev/null || true
    done
    for m in "${FAILOVER_MEMBERS[@]}"; do
        pid=$(member_pid "$m") || continue
        await_exit "$pid" "$STOP_TIMEOUT"
    done
    FAILOVER_MEMBERS=()
}

# await_status NAME ADMIN_PORT CHECK: polls the member's /status (signed with
# $FAILOVER_DIR/password when there is one) until the Python expression CHECK holds for
# its JSON `s`, for up to START_TIMEOUT seconds.
await_status() {
    python3 - "$2" "$3" "$START_TIMEOUT" "$LIB_DIR" "${FAILOVER_DIR:-}/password" <<'PY' || { log "$1: not '$3' within ${START_TIMEOUT}s"; return 1; }
import importlib.util, sys, time
port, check, timeout, lib, password_file = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
spec = importlib.util.spec_from_file_location("admin_status", f"{lib}/admin-status.py")
admin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(admin)
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        s = admin.status(port, password_file, timeout=1)
        if eval(check, {"s": s}):
            sys.exit(0)
    except (OSError, ValueError):
        pass
    time.sleep(0.1)
sys.exit(1)
PY
}

# start_duomq_pair: two duomq-broker processes, ha.policy replication, the fileLock
# arbiter in the pair's directory; a starts as primary, b as backup and syncs.
# DUOMQ_BACKUP_ACK sets ha.backupAck (default written).
start_duomq_pair() {
    FAILOVER_DIR="$WORK/failover-duomq"
    mkdir -p "$FAILOVER_DIR"
    printf 'bench-%s\n' "$RANDOM$RANDOM$RANDOM" >"$FAILOVER_DIR/password"
    local m role ports
    read -r -a ports <<<"$(free_ports 6)"
    declare -gA DUOMQ_STOMP=([a]=${ports[0]} [b]=${ports[3]})
    declare -gA DUOMQ_ADMIN=([a]=${ports[1]} [b]=${ports[4]})
    declare -gA DUOMQ_CLUSTER=([a]=${ports[2]} [b]=${ports[5]})
    for m in a b; do
        if [[ $m == a ]]; then role=primary; else role=backup; fi
        write_duomq_member "$m" "failover-duomq-$m.log"
        cat >>"$FAILOVER_DIR/$m/broker.yaml" <<YAML
ha:
  policy: replication
  role: $role
  groupName: bench
  backupAck: ${DUOMQ_BACKUP_ACK:-written}
  checkPeriod: 100ms
  connectionTtl: 1s
  cluster:
    listen: 127.0.0.1:${DUOMQ_CLUSTER[$m]}
    passwordFile: $FAILOVER_DIR/password
  members:
    - name: node-a
      cluster: 127.0.0.1:${DUOMQ_CLUSTER[a]}
      stomp: 127.0.0.1:${DUOMQ_STOMP[a]}
    - name: node-b
      cluster: 127.0.0.1:${DUOMQ_CLUSTER[b]}
      stomp: 127.0.0.1:${DUOMQ_STOMP[b]}
  arbiter:
    kind: fileLock
    lockFile: $FAILOVER_DIR/live.lock
YAML
    done
    start_duomq_members 's["role"] == "backup" and s["ha"]["sync"]["state"] == "synced"'
}

# write_duomq_member NAME LOG: FAILOVER_DIR/NAME/broker.yaml up to storage.dataDir (the
# caller appends the rest), for node-NAME on ports DUOMQ_STOMP[NAME] and
# DUOMQ_ADMIN[NAME], and its start.sh, logging to logs/LOG.
write_duomq_member() {
    local m=$1 dir="$FAILOVER_DIR/$1"
    mkdir -p "$dir/data"
    cat >"$dir/broker.yaml" <<YAML
node:
  id: node-$m
stomp:
  listen: 127.0.0.1:${DUOMQ_STOMP[$m]}
admin:
  listen: 127.0.0.1:${DUOMQ_ADMIN[$m]}
storage:
  dataDir: $dir/data
YAML
    write_start_script "$dir" "$LOG_DIR/$2" "$DUOMQ_BROKER" run --config "$dir/broker.yaml"
}

# start_duomq_members BACKUP_READY: starts members a and b written by write_duomq_member,
# a until it is live, then b until the Python expression BACKUP_READY holds for its
# /status `s`; sets FAILOVER_ARGS for 'duomq-bench failover --kill-mode status'.
start_duomq_members() {
    local m
    FAILOVER_MEMBERS=(a b)
    RUNNING_STOP=stop_pair
    "$FAILOVER_DIR/a/start.sh" && await_status a "${DUOMQ_ADMIN[a]}" 's["role"] == "live"' || return 1
    "$FAILOVER_DIR/b/start.sh" && await_status b "${DUOMQ_ADMIN[b]}" "$1" || return 1
    FAILOVER_ARGS=(--url "failover:(stomp://127.0.0.1:${DUOMQ_STOMP[a]},stomp://127.0.0.1:${DUOMQ_STOMP[b]})?$FAILOVER_QUERY"
        --kill-mode status)
    for m in a b; do
        FAILOVER_ARGS+=(--member "$m=$FAILOVER_DIR/$m/pid:$FAILOVER_DIR/$m/start.sh"
            --member-admin "$m=http://127.0.0.1:${DUOMQ_ADMIN[$m]}")
    done
    # Members with a cluster password answer /status only to requests signed with it.
    if [[ -f $FAILOVER_DIR/password ]]; then
        FAILOVER_ARGS+=(--admin-password-file "$FAILOVER_DIR/password")
    fi
}

# start_activemq_pair: two ActiveMQ processes on one KahaDB directory; a takes the lock
# and is master, b waits for it as slave. Each has its own STOMP port, which only the
# master opens: that is how duomq-bench (--kill-mode port) tells which one is live.
start_activemq_pair() {
    FAILOVER_DIR="$WORK/failover-activemq"
    mkdir -p "$FAILOVER_DIR/shared"
    local m ports
    read -r -a ports <<<"$(free_ports 2)"
    declare -gA AMQ_STOMP=([a]=${ports[0]} [b]=${ports[1]})
    for m in a b; do
        write_activemq_instance "$FAILOVER_DIR/$m" activemq-shared.xml "${AMQ_STOMP[$m]}" \
            "$LOG_DIR/failover-activemq-$m.log" -Dduomqbench.sharedDir="$FAILOVER_DIR/shared"
    done
    start_activemq_members
}

# start_activemq_members: starts ActiveMQ members a and b (instances written by
# write_activemq_instance under FAILOVER_DIR, on STOMP ports AMQ_STOMP[NAME]), a until it
# accepts STOMP clients, then b, the slave; sets FAILOVER_ARGS for 'duomq-bench failover
# --kill-mode port' (a restarted member is a slave once it runs: it only waits for the
# lock then).
start_activemq_members() {
    local m
    FAILOVER_MEMBERS=(a b)
    RUNNING_STOP=stop_pair
    "$FAILOVER_DIR/a/start.sh" &&
        probe await-stomp --url "stomp://127.0.0.1:${AMQ_STOMP[a]}" --timeout "$START_TIMEOUT" --pid "$(member_pid a)" ||
        return 1
    "$FAILOVER_DIR/b/start.sh" || return 1
    FAILOVER_ARGS=(--url "failover:(stomp://127.0.0.1:${AMQ_STOMP[a]},stomp://127.0.0.1:${AMQ_STOMP[b]})?$FAILOVER_QUERY"
        --kill-mode port --settle 5s)
    for m in a b; do
        FAILOVER_ARGS+=(--member "$m=$FAILOVER_DIR/$m/pid:$FAILOVER_DIR/$m/start.sh"
            --member-stomp "$m=127.0.0.1:${AMQ_STOMP[$m]}")
    done
}

# run_failover TARGET: start the pair, run duomq-bench failover, stop the pair.
run_failover() {
    local target=$1
    log "failover/$target: starting the pair"
    if ! "start_${target}_pair"; then
        fail_cell "failover/$target" "the pair did not start (see logs/failover-$target-*.log)"
        stop_broker
        return
    fi
    log "failover/$target: $FAILOVER_KILLS kills, one every $FAILOVER_EVERY"
    bench_json "failover/$target" "$OUT/failover.jsonl" "failover-$target.log" "$((FAILOVER_KILLS * 90 + 120))" \
        failover "${FAILOVER_ARGS[@]}" --destination "/queue/failover-$STAMP" --kills "$FAILOVER_KILLS" \
        --kill-every "$FAILOVER_EVERY" --label "failover/$target" --json
    log "failover/$target: stopping the pair"
    stop_broker
}
