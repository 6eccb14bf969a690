# shellcheck shell=bash disable=SC2034 # RUNNING_STOP is read by brokers.sh (stop_broker)
# The network section of bench/compare.sh (issue 13): a flow from a producer on one
# broker to a consumer on another, over a store-and-forward bridge, beside the same flow
# on one broker and across two ActiveMQ brokers joined by a network connector; then the
# gap a failover of the bridge's target leaves in that flow.
#
# Cells, one after the other, each 1 KiB persistent 1P+1C window 64 for --duration after
# --warmup (written to network.jsonl, one 'duomq-bench run --json' line each):
#   network/duomq-local     one duomq broker, producer and consumer on it
#   network/duomq-bridged   standalone brokers A and B, A's network connector to B's
#                           cluster port; producer on A, consumer on B (rates count
#                           what B delivered)
#   network/activemq        two ActiveMQ brokers, the producer's with a network
#                           connector to the consumer's OpenWire port
#                           (activemq-network-source.xml, activemq-network-sink.xml)
# Failover (network-failover.jsonl, one 'duomq-bench failover --json' line): the target
# is a live/backup pair (the failover section's, start_duomq_pair), the source a
# standalone broker with a masterslave:(...) connector to the pair's cluster ports; the
# producer sends to the source, the consumer reads from the pair through its failover
# URL, and the pair's live is SIGKILLed NETWORK_KILLS times; the gap is the longest
# pause between new messages at the consumer after each kill (--gap-at deliveries).
#
# The members of a setup are started like the failover section's (a start.sh per member
# under FAILOVER_DIR, stopped together by stop_pair). Sourced by compare.sh after
# failover.sh; uses its WORK, LOG_DIR, LIB_DIR, DUOMQ_BROKER, BENCH, OUT, STAMP,
# DURATION, WARMUP, PREFETCH, CELL_TIMEOUT, START_TIMEOUT, NETWORK_KILLS,
# FAILOVER_EVERY and TARGETS.

# How long consumers may take to receive the rest after the producers stop: a bridge
# may still hold up to its prefetch in flight when they do.
NETWORK_DRAIN_TIMEOUT=30s

# write_standalone_config DIR NAME STOMP ADMIN CLUSTER PASSWORD_FILE [CONNECTOR_URI [LOG]]:
# DIR/broker.yaml for a standalone duomq broker (ha.policy none) that accepts bridges on
# its cluster port and, with CONNECTOR_URI, bridges to it; DIR/start.sh starts it, logging
# to LOG (logs/network-NAME.log).
write_standalone_config() {
    local dir=$1 name=$2 stomp=$3 admin=$4 cluster=$5 password=$6 uri=${7:-}
    local log=${8:-$LOG_DIR/network-$2.log}
    mkdir -p "$dir/data"
    cat >"$dir/broker.yaml" <<YAML
node:
  id: $name
stomp:
  listen: 127.0.0.1:$stomp
admin:
  listen: 127.0.0.1:$admin
storage:
  dataDir: $dir/data
ha:
  policy: none
  cluster:
    listen: 127.0.0.1:$cluster
    passwordFile: $password
YAML
    if [[ -n $uri ]]; then
        cat >>"$dir/broker.yaml" <<YAML
network:
  connectors:
    - name: to-target
      uri: $uri
YAML
    fi
    write_start_script "$dir" "$log" "$DUOMQ_BROKER" run --config "$dir/broker.yaml"
}

# await_linked NAME ADMIN_PORT: until the broker's first connector reports every link
# linked.
await_linked() {
    await_status "$1" "$2" \
        'bool(s.get("network") and s["network"]["connectors"] and all(c["links"] and all(l["state"] == "linked" for l in c["links"]) for c in s["network"]["connectors"]))'
}

# save_status NAME ADMIN_PORT [FILE]: the broker's /status, into FILE (default
# logs/network-NAME-status.json).
save_status() {
    python3 "$LIB_DIR/admin-status.py" "$2" "${FAILOVER_DIR:-}/password" >"${3:-$LOG_DIR/network-$1-status.json}" 2>/dev/null || true
}

# network_cell LABEL PRODUCER_URL CONSUMER_URL PID: one 1 KiB persistent 1P+1C w64 run;
# its JSON goes to network.jsonl. A cell whose confirmed messages did not all arrive
# fails loudly: its rate would count a flow that never finished.
network_cell() {
    local label=$1 url=$2 consumer_url=$3 pid=$4 out="$WORK/network-cell.json" rc=0
    local name=${label#network/}
    log "$label: 1 KiB persistent 1P+1C w64 (${DURATION} after ${WARMUP} warm-up)"
    # The machine's 1-minute load before the cell: a run taken while other work shares
    # the CPUs is worth repeating, and the report says so.
    printf '%s\t%s\n' "$label" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/network-load.tsv"
    timeout --foreground -k 10 "$((CELL_TIMEOUT + 30))" "$BENCH" run --url "$url" --consumer-url "$consumer_url" \
        --destination "/queue/network-$name-$STAMP" --producers 1 --consumers 1 --size 1024 \
        --window 64 --persistent --duration "$DURATION" --warmup "$WARMUP" --prefetch "$PREFETCH" \
        --ack client-individual --subscribe-header "activemq.prefetchSize=$PREFETCH" \
        --drain-timeout "$NETWORK_DRAIN_TIMEOUT" --broker-pid "$pid" --label "$label" --json \
        >"$out" 2>>"$LOG_DIR/network-$name.log" || rc=$?
    if ((rc != 0)); then
        fail_cell "$label" "duomq-bench exited with $rc (see logs/network-$name.log)"
        return
    fi
    if ! tail -n 1 "$out" | python3 -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; then
        fail_cell "$label" "duomq-bench printed no JSON result (see logs/network-$name.log)"
        return
    fi
    tail -n 1 "$out" >>"$OUT/network.jsonl"
    local problem
    problem=$(tail -n 1 "$out" | python3 "$LIB_DIR/network-report.py" --check-run)
    [[ -z $problem ]] || fail_cell "$label" "$problem"
}

# start_network_bridged: brokers A and B, standalone, A bridged to B; the producer's URL
# in NET_SOURCE_URL, the consumer's in NET_TARGET_URL, A's pid in NET_SOURCE_PID.
start_network_bridged() {
    FAILOVER_DIR="$WORK/network-bridged"
    rm -rf "$FAILOVER_DIR"
    mkdir -p "$FAILOVER_DIR"
    printf 'bench-%s\n' "$RANDOM$RANDOM$RANDOM" >"$FAILOVER_DIR/password"
    local p
    read -r -a p <<<"$(free_ports 6)"
    write_standalone_config "$FAILOVER_DIR/b" bridged-b "${p[3]}" "${p[4]}" "${p[5]}" "$FAILOVER_DIR/password"
    write_standalone_config "$FAILOVER_DIR/a" bridged-a "${p[0]}" "${p[1]}" "${p[2]}" "$FAILOVER_DIR/password" \
        "tcp://127.0.0.1:${p[5]}"
    FAILOVER_MEMBERS=(b a)
    RUNNING_STOP=stop_pair
    NET_SOURCE_ADMIN=${p[1]}
    "$FAILOVER_DIR/b/start.sh" &&
        probe await-http --url "http://127.0.0.1:${p[4]}/readyz" --timeout "$START_TIMEOUT" --pid "$(member_pid b)" &&
        "$FAILOVER_DIR/a/start.sh" &&
        probe await-http --url "http://127.0.0.1:${p[1]}/readyz" --timeout "$START_TIMEOUT" --pid "$(member_pid a)" &&
        await_linked bridged-a "${p[1]}" || return 1
    NET_SOURCE_URL="stomp://127.0.0.1:${p[0]}"
    NET_TARGET_URL="stomp://127.0.0.1:${p[3]}"
    NET_SOURCE_PID=$(member_pid a)
}

# await_log FILE PATTERN SECONDS: until FILE has a line matching PATTERN.
await_log() {
    local ticks=0
    until grep -q -- "$2" "$1" 2>/dev/null; do
        ((ticks >= $3 * 5)) && return 1
        sleep 0.2
        ticks=$((ticks + 1))
    done
}

# start_network_activemq: the sink, then the source with its network connector to the
# sink; returns once the source logs the bridge as established.
start_network_activemq() {
    FAILOVER_DIR="$WORK/network-activemq"
    rm -rf "$FAILOVER_DIR"
    local m p
    read -r -a p <<<"$(free_ports 3)"
    local -A stomp=([source]=${p[0]} [sink]=${p[1]})
    for m in sink source; do
        write_activemq_instance "$FAILOVER_DIR/$m" "activemq-network-$m.xml" "${stomp[$m]}" \
            "$LOG_DIR/network-activemq-$m.log" -Dduomqbench.brokerName="bench-$m" \
            -Dduomqbench.openwirePort="${p[2]}" -Dduomqbench.peerPort="${p[2]}"
    done
    FAILOVER_MEMBERS=(source sink)
    RUNNING_STOP=stop_pair
    "$FAILOVER_DIR/sink/start.sh" &&
        probe await-stomp --url "stomp://127.0.0.1:${stomp[sink]}" --timeout "$START_TIMEOUT" --pid "$(member_pid sink)" &&
        "$FAILOVER_DIR/source/start.sh" &&
        probe await-stomp --url "stomp://127.0.0.1:${stomp[source]}" --timeout "$START_TIMEOUT" --pid "$(member_pid source)" ||
        return 1
    if ! await_log "$LOG_DIR/network-activemq-source.log" 'Network connection between .* has been established' "$START_TIMEOUT"; then
        log "network/activemq: the network connector did not link within ${START_TIMEOUT}s"
        return 1
    fi
    NET_SOURCE_URL="stomp://127.0.0.1:${stomp[source]}"
    NET_TARGET_URL="stomp://127.0.0.1:${stomp[sink]}"
    NET_SOURCE_PID=$(member_pid source)
}

# start_network_failover: the failover section's duomq pair as the target, plus a
# standalone source bridged to it with masterslave:(a,b); sets NET_FAILOVER_ARGS.
start_network_failover() {
    rm -rf "$WORK/failover-duomq"
    start_duomq_pair || return 1
    local p
    read -r -a p <<<"$(free_ports 3)"
    write_standalone_config "$FAILOVER_DIR/src" failover-src "${p[0]}" "${p[1]}" "${p[2]}" "$FAILOVER_DIR/password" \
        "masterslave:(tcp://127.0.0.1:${DUOMQ_CLUSTER[a]},tcp://127.0.0.1:${DUOMQ_CLUSTER[b]})"
    FAILOVER_MEMBERS+=(src)
    "$FAILOVER_DIR/src/start.sh" &&
        probe await-http --url "http://127.0.0.1:${p[1]}/readyz" --timeout "$START_TIMEOUT" --pid "$(member_pid src)" &&
        await_linked failover-src "${p[1]}" || return 1
    NET_SOURCE_ADMIN=${p[1]}
    # FAILOVER_ARGS is --url PAIR_URL, then the kill mode and the pair's members.
    NET_FAILOVER_ARGS=(--url "stomp://127.0.0.1:${p[0]}" --consumer-url "${FAILOVER_ARGS[1]}" --gap-at deliveries
        "${FAILOVER_ARGS[@]:2}")
}

run_network_failover() {
    local out="$WORK/network-failover.json" rc=0 label=network/failover
    log "$label: starting the target pair and the bridged source"
    if ! start_network_failover; then
        fail_cell "$label" "the brokers did not start or link (see logs/failover-duomq-*.log, logs/network-failover-src.log)"
        stop_broker
        return
    fi
    log "$label: $NETWORK_KILLS kills of the target's live, one every $FAILOVER_EVERY"
    printf '%s\t%s\n' "$label" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/network-load.tsv"
    timeout --foreground -k 10 "$((NETWORK_KILLS * 90 + 120))" "$BENCH" failover "${NET_FAILOVER_ARGS[@]}" \
        --destination "/queue/network-failover-$STAMP" --window 64 --size 1024 --kills "$NETWORK_KILLS" \
        --kill-every "$FAILOVER_EVERY" --label "$label" --json >"$out" 2>>"$LOG_DIR/network-failover.log" || rc=$?
    save_status failover-src "$NET_SOURCE_ADMIN"
    if ((rc != 0)); then
        fail_cell "$label" "duomq-bench failover exited with $rc (see logs/network-failover.log)"
    elif ! tail -n 1 "$out" | python3 -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; then
        fail_cell "$label" "duomq-bench failover printed no JSON (see logs/network-failover.log)"
    else
        tail -n 1 "$out" >>"$OUT/network-failover.jsonl"
        local problem
        problem=$(tail -n 1 "$out" | python3 "$LIB_DIR/network-report.py" --check-failover)
        [[ -z $problem ]] || fail_cell "$label" "$problem"
    fi
    log "$label: stopping"
    stop_broker
}

run_network() {
    : >"$OUT/network.jsonl"
    : >"$OUT/network-failover.jsonl"
    printf 'start\t%s\n' "$(cut -d' ' -f1 /proc/loadavg)" >"$OUT/network-load.tsv"
    if [[ " ${TARGETS[*]} " == *" duomq "* ]]; then
        log "network/duomq-local: starting one broker"
        if start_duomq; then
            network_cell network/duomq-local "$BROKER_URL" "$BROKER_URL" "$BROKER_PID"
        else
            fail_cell network/duomq-local "the broker did not start (see logs/duomq.log)"
        fi
        stop_broker
        log "network/duomq-bridged: starting brokers A and B, A bridged to B"
        if start_network_bridged; then
            network_cell network/duomq-bridged "$NET_SOURCE_URL" "$NET_TARGET_URL" "$NET_SOURCE_PID"
            save_status bridged-a "$NET_SOURCE_ADMIN"
        else
            fail_cell network/duomq-bridged "the brokers did not start or link (see logs/network-bridged-*.log)"
        fi
        stop_broker
    fi
    if [[ " ${TARGETS[*]} " == *" activemq "* ]]; then
        log "network/activemq: starting two ActiveMQ brokers joined by a network connector"
        if start_network_activemq; then
            network_cell network/activemq "$NET_SOURCE_URL" "$NET_TARGET_URL" "$NET_SOURCE_PID"
        else
            fail_cell network/activemq "the brokers did not start or link (see logs/network-activemq-*.log)"
        fi
        stop_broker
    fi
    if [[ " ${TARGETS[*]} " == *" duomq "* ]]; then
        run_network_failover
    fi
}
