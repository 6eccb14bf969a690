# shellcheck shell=bash disable=SC2034 # RUNNING_STOP is read by brokers.sh (stop_broker)
# The message groups section of bench/compare.sh (issue 14): what pinning JMSXGroupID
# groups to one consumer costs on one broker, beside ActiveMQ's message groups on the same
# load, and the latency a first message of a new group pays for a cluster-wide grouping
# decision.
#
# Throughput cells (groups.jsonl, one 'duomq-bench run --json' line each), on one broker
# each, 1 KiB persistent, GROUPS_PRODUCERS producers + GROUPS_CONSUMERS consumers, window
# 64, for --duration after --warmup:
#   groups/duomq-ungrouped      no group header
#   groups/duomq-grouped        message i of each producer in group g<i % GROUPS_COUNT>
#   groups/activemq-ungrouped   the same two on ActiveMQ (its STOMP connector maps the
#   groups/activemq-grouped     JMSXGroupID header to its message groups)
# RabbitMQ has no message groups: the section says so and leaves it out. With
# GROUPS_ROUNDS (--groups-rounds) above 1 the pair runs again as
# groups/TARGET-ungrouped-r2, groups/TARGET-grouped-r2, ..., every other round grouped
# first (ungrouped, grouped, grouped, ungrouped, ...), and the report takes each kind's
# mean: a broker that slows down steadily as its cells write (a disk's write budget
# running out) then weighs on both kinds alike.
# Every grouped cell checks that each group reached exactly one consumer, in order per
# producer (duomq-bench fails the run otherwise; the cell is then marked).
#
# Decision latency cells (same file), two standalone duomq brokers joined by network
# connectors both ways: L with grouping.handler local, R with grouping.handler remote
# and address masterslave:(tcp://L's cluster port). 1 producer + 1 consumer on the same
# broker, window 1 (every SEND waits for its RECEIPT, so each receipt latency is one
# SEND's own), GROUPS_NEW_GROUPS groups alive at a time, each replaced by a fresh one
# after GROUPS_GROUP_SIZE messages: 1 in GROUPS_GROUP_SIZE messages opens a new group.
#   groups/cluster-remote  producer on R: a new group waits for L's decision
#   groups/cluster-local   producer on L: a new group is decided (and journaled) locally
# The report sets the receipt latency of first messages beside that of the others, and
# the grouping sections of L's and R's /status after both cells (logs/groups-*-status.json):
# how many proposals L decided and how many bindings R learnt from it.
#
# Sourced by compare.sh after network.sh (it uses write_start_script, member_pid,
# stop_pair, await_status, await_linked, save_status, free_ports, probe, fail_cell and
# WORK, LOG_DIR, LIB_DIR, DUOMQ_BROKER, BENCH, OUT, STAMP, DURATION, WARMUP, PREFETCH,
# CELL_TIMEOUT, START_TIMEOUT and TARGETS).

GROUPS_PRODUCERS=2
GROUPS_CONSUMERS=4
GROUPS_COUNT=1000
GROUPS_NEW_GROUPS=10
GROUPS_GROUP_SIZE=5

# write_grouping_config DIR NAME STOMP ADMIN CLUSTER PASSWORD_FILE PEER_CLUSTER HANDLER:
# DIR/broker.yaml for a standalone broker (ha.policy none, its cluster port open to
# bridges) with a network connector to 127.0.0.1:PEER_CLUSTER and grouping.handler
# HANDLER (local, or remote asking PEER_CLUSTER); DIR/start.sh starts it.
write_grouping_config() {
    local dir=$1 name=$2 stomp=$3 admin=$4 cluster=$5 password=$6 peer=$7 handler=$8
    write_standalone_config "$dir" "$name" "$stomp" "$admin" "$cluster" "$password" "tcp://127.0.0.1:$peer" "$LOG_DIR/$name.log"
    cat >>"$dir/broker.yaml" <<YAML
grouping:
  handler: $handler
  # New groups keep coming for the whole cell (one in GROUPS_GROUP_SIZE messages): room
  # for far more than the default 10000 per queue, so that no cell runs into the limit.
  maxGroups: 10000000
YAML
    if [[ $handler == remote ]]; then
        printf '  address: masterslave:(tcp://127.0.0.1:%s)\n' "$peer" >>"$dir/broker.yaml"
    fi
}

# groups_cell LABEL URL PID [ARGS...]: one duomq-bench run, its JSON line into
# groups.jsonl. A grouped run that broke its groups exits 1 after printing its JSON: the
# line is kept (the report shows the violations) and the cell fails.
groups_cell() {
    local label=$1 url=$2 pid=$3 out="$WORK/groups-cell.json" rc=0
    shift 3
    local name=${label#groups/}
    log "$label: ${DURATION} after ${WARMUP} warm-up"
    # The machine's 1-minute load before the cell: cells taken while other work shares
    # the CPUs are worth repeating, and the report says so.
    printf '%s\t%s\n' "$label" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/groups-load.tsv"
    timeout --foreground -k 10 "$((CELL_TIMEOUT + 30))" "$BENCH" run --url "$url" \
        --destination "/queue/groups-$name-$STAMP" --size 1024 --persistent \
        --duration "$DURATION" --warmup "$WARMUP" --prefetch "$PREFETCH" --ack client-individual \
        --subscribe-header "activemq.prefetchSize=$PREFETCH" --drain-timeout 30s \
        --broker-pid "$pid" --label "$label" --json "$@" \
        >"$out" 2>>"$LOG_DIR/groups-$name.log" || rc=$?
    if ! tail -n 1 "$out" | python3 -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; then
        fail_cell "$label" "duomq-bench exited with $rc and printed no JSON result (see logs/groups-$name.log)"
        return
    fi
    tail -n 1 "$out" >>"$OUT/groups.jsonl"
    local problem
    problem=$(tail -n 1 "$out" | python3 "$LIB_DIR/groups-report.py" --check-run)
    if [[ -n $problem ]]; then
        fail_cell "$label" "$problem"
    elif ((rc != 0)); then
        fail_cell "$label" "duomq-bench exited with $rc (see logs/groups-$name.log)"
    fi
}

# groups_throughput TARGET: the ungrouped and the grouped cell on the broker that is up,
# GROUPS_ROUNDS times, the order turned round every other round.
groups_throughput() {
    local load=(--producers "$GROUPS_PRODUCERS" --consumers "$GROUPS_CONSUMERS" --window 64) round suffix='' kind
    for ((round = 1; round <= GROUPS_ROUNDS; round++)); do
        ((round == 1)) || suffix="-r$round"
        local kinds=(ungrouped grouped)
        ((round % 2 == 1)) || kinds=(grouped ungrouped)
        for kind in "${kinds[@]}"; do
            if [[ $kind == grouped ]]; then
                groups_cell "groups/$1-grouped$suffix" "$BROKER_URL" "$BROKER_PID" "${load[@]}" --groups "$GROUPS_COUNT"
            else
                groups_cell "groups/$1-ungrouped$suffix" "$BROKER_URL" "$BROKER_PID" "${load[@]}"
            fi
        done
    done
}

# start_groups_cluster: brokers L (local handler) and R (remote handler), bridged both
# ways; sets GROUPS_L_URL, GROUPS_R_URL and their pids.
start_groups_cluster() {
    FAILOVER_DIR="$WORK/groups-cluster"
    rm -rf "$FAILOVER_DIR"
    mkdir -p "$FAILOVER_DIR"
    printf 'bench-%s\n' "$RANDOM$RANDOM$RANDOM" >"$FAILOVER_DIR/password"
    local p
    read -r -a p <<<"$(free_ports 6)"
    write_grouping_config "$FAILOVER_DIR/l" groups-l "${p[0]}" "${p[1]}" "${p[2]}" "$FAILOVER_DIR/password" "${p[5]}" local
    write_grouping_config "$FAILOVER_DIR/r" groups-r "${p[3]}" "${p[4]}" "${p[5]}" "$FAILOVER_DIR/password" "${p[2]}" remote
    FAILOVER_MEMBERS=(r l)
    RUNNING_STOP=stop_pair
    GROUPS_L_ADMIN=${p[1]} GROUPS_R_ADMIN=${p[4]}
    "$FAILOVER_DIR/l/start.sh" &&
        probe await-http --url "http://127.0.0.1:${p[1]}/readyz" --timeout "$START_TIMEOUT" --pid "$(member_pid l)" &&
        "$FAILOVER_DIR/r/start.sh" &&
        probe await-http --url "http://127.0.0.1:${p[4]}/readyz" --timeout "$START_TIMEOUT" --pid "$(member_pid r)" &&
        await_linked groups-l "${p[1]}" && await_linked groups-r "${p[4]}" || return 1
    GROUPS_L_URL="stomp://127.0.0.1:${p[0]}" GROUPS_R_URL="stomp://127.0.0.1:${p[3]}"
    GROUPS_L_PID=$(member_pid l) GROUPS_R_PID=$(member_pid r)
}

run_groups() {
    : >"$OUT/groups.jsonl"
    printf 'start\t%s\n' "$(cut -d' ' -f1 /proc/loadavg)" >"$OUT/groups-load.tsv"
    local target
    for target in duomq activemq; do
        [[ " ${TARGETS[*]} " == *" $target "* ]] || continue
        log "groups/$target: starting one broker"
        if "start_$target"; then
            groups_throughput "$target"
        else
            fail_cell "groups/$target-ungrouped" "the broker did not start (see logs/$target.log)"
        fi
        stop_broker
    done
    [[ " ${TARGETS[*]} " == *" duomq "* ]] || return 0
    log "groups/cluster: starting L (grouping.handler local) and R (remote), bridged both ways"
    if start_groups_cluster; then
        local latency=(--producers 1 --consumers 1 --window 1 --groups "$GROUPS_NEW_GROUPS" --group-size "$GROUPS_GROUP_SIZE")
        groups_cell groups/cluster-remote "$GROUPS_R_URL" "$GROUPS_R_PID" "${latency[@]}"
        groups_cell groups/cluster-local "$GROUPS_L_URL" "$GROUPS_L_PID" "${latency[@]}"
        save_status groups-l "$GROUPS_L_ADMIN" "$LOG_DIR/groups-l-status.json"
        save_status groups-r "$GROUPS_R_ADMIN" "$LOG_DIR/groups-r-status.json"
    else
        fail_cell groups/cluster-remote "the brokers did not start or link (see logs/groups-l.log, logs/groups-r.log)"
    fi
    stop_broker
}
