# shellcheck shell=bash disable=SC2034 # RUNNING_STOP and FAILOVER_* are read by brokers.sh and failover.sh
# The backlog section of bench/compare.sh (issue 18): how fast a backlog drains when duomq
# holds it in memory, when duomq pages it (addressFullPolicy: page, the queue's memory a
# small fraction of the backlog), and when ActiveMQ holds it in its default store.
#
# Each cell is one 'duomq-bench run --backlog N': BACKLOG_PRODUCERS producers send
# BACKLOG_MESSAGES persistent messages of BACKLOG_SIZE bytes in all, 64 receipts in flight
# each, to a queue nobody consumes; once every one is receipted, BACKLOG_CONSUMERS
# consumer(s) subscribe (client-individual acks, prefetch PREFETCH) and take them all.
# The drain rate is deliveries over the time from SUBSCRIBE until the last receipted
# message arrived; the broker's RSS is sampled throughout. On these setups, labelled
# backlog/SETUP/rROUND (backlog.jsonl, one JSON line each):
#   duomq-memory  memory.maxQueueBytes and maxBrokerBytes above the backlog: all of it
#                 stays in memory
#   duomq-paged   the same, plus addressSettings '>' with maxSizeBytes BACKLOG_PAGE_BYTES
#                 and addressFullPolicy page: all but that much waits in the journal
#   activemq      the matrix's ActiveMQ (bench/lib/activemq.xml: KahaDB, journal syncs on,
#                 the default memory limits and store cursor)
# BACKLOG_ROUNDS rounds, every broker fresh for each cell. The report (backlog-report.py)
# compares medians: paged/in-memory (goal >= 0.5) and duomq paged/ActiveMQ.
#
# Sourced by compare.sh after brokers.sh and failover.sh (it uses write_duomq_member,
# member_pid, stop_pair, start_activemq, stop_broker, free_ports, probe, bench_json,
# fail_cell, meta and WORK, LOG_DIR, BENCH, OUT, STAMP, PREFETCH, START_TIMEOUT, TARGETS,
# BACKLOG_MESSAGES, BACKLOG_SIZE, BACKLOG_PAGE_BYTES and BACKLOG_ROUNDS).

BACKLOG_PRODUCERS=4
BACKLOG_CONSUMERS=1

# backlog_memory_yaml: memory limits that hold the whole backlog (twice its bodies, at
# least 1 GiB), so the in-memory setup never blocks its producers.
backlog_memory_yaml() {
    local mib=$(((BACKLOG_MESSAGES * (BACKLOG_SIZE + 512) * 2 / 1048576) + 1))
    ((mib >= 1024)) || mib=1024
    printf 'memory:\n  maxQueueBytes: %sMiB\n  maxBrokerBytes: %sMiB\n' "$mib" "$((mib * 2))"
}

# start_duomq_backlog SETUP: one fresh duomq broker for SETUP (duomq-memory or
# duomq-paged) in WORK/backlog-duomq/SETUP; sets BROKER_URL and BROKER_PID.
start_duomq_backlog() {
    local setup=$1 p
    FAILOVER_DIR="$WORK/backlog-duomq"
    rm -rf "${FAILOVER_DIR:?}/$setup"
    read -r -a p <<<"$(free_ports 2)"
    declare -gA DUOMQ_STOMP=([$setup]=${p[0]}) DUOMQ_ADMIN=([$setup]=${p[1]})
    write_duomq_member "$setup" "backlog-$setup.log"
    backlog_memory_yaml >>"$FAILOVER_DIR/$setup/broker.yaml"
    if [[ $setup == duomq-paged ]]; then
        cat >>"$FAILOVER_DIR/$setup/broker.yaml" <<YAML
addressSettings:
  - match: ">"
    maxSizeBytes: $BACKLOG_PAGE_BYTES
    addressFullPolicy: page
YAML
    fi
    FAILOVER_MEMBERS=("$setup")
    RUNNING_STOP=stop_pair
    "$FAILOVER_DIR/$setup/start.sh" &&
        probe await-http --url "http://127.0.0.1:${p[1]}/readyz" --timeout "$START_TIMEOUT" \
            --pid "$(member_pid "$setup")" || return 1
    BROKER_URL="stomp://127.0.0.1:${p[0]}"
    BROKER_PID=$(member_pid "$setup")
}

# backlog_start_failure SETUP LOG: why SETUP's broker did not start: the broker's own
# last error line (a refused config says what to fix), else where to look.
backlog_start_failure() {
    local said
    said=$(grep -iE 'error|invalid|refused|not supported' "$LOG_DIR/$2" 2>/dev/null | tail -n 1 | cut -c1-300)
    if [[ -n $said ]]; then
        printf 'the broker did not start: %s (logs/%s)' "$said" "$2"
    else
        printf 'the broker did not start (see logs/%s)' "$2"
    fi
}

# explain_bench_failure LABEL LOG: after a bench_json that produced no result, records
# duomq-bench's own 'error:' line from logs/LOG for LABEL too (the report joins them).
explain_bench_failure() {
    local said
    [[ -z $BENCH_RESULT ]] || return 0
    said=$(grep '^error: ' "$LOG_DIR/$2" 2>/dev/null | tail -n 1 | cut -c1-300)
    [[ -z $said ]] || fail_cell "$1" "$said"
}

# backlog_cell SETUP ROUND: a fresh broker for SETUP, one 'duomq-bench run --backlog'
# against it into backlog.jsonl, the broker stopped.
backlog_cell() {
    local setup=$1 round=$2 label="backlog/$1/r$2" log
    case $setup in
    activemq) log=activemq.log ;;
    *) log="backlog-$setup.log" ;;
    esac
    log "$label: starting the broker"
    local started=yes
    case $setup in
    activemq) start_activemq || started=no ;;
    *) start_duomq_backlog "$setup" || started=no ;;
    esac
    if [[ $started == no ]]; then
        fail_cell "$label" "$(backlog_start_failure "$setup" "$log")"
        stop_broker
        return
    fi
    local args=(run --url "$BROKER_URL" --destination "/queue/backlog-$setup-r$round-$STAMP"
        --backlog "$BACKLOG_MESSAGES" --size "$BACKLOG_SIZE" --persistent --window 64
        --producers "$BACKLOG_PRODUCERS" --consumers "$BACKLOG_CONSUMERS"
        --prefetch "$PREFETCH" --ack client-individual --subscribe-header "activemq.prefetchSize=$PREFETCH"
        --drain-timeout "${BACKLOG_TIMEOUT}s" --broker-pid "$BROKER_PID" --label "$label" --json)
    printf '%s\t%s\n' "$label" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/backlog-load.tsv"
    log "$label: $BACKLOG_MESSAGES x $BACKLOG_SIZE B persistent, fill then drain"
    # The fill and the drain each get BACKLOG_TIMEOUT, plus a minute to connect and report.
    bench_json "$label" "$OUT/backlog.jsonl" "backlog-bench.log" "$((2 * BACKLOG_TIMEOUT + 60))" "${args[@]}"
    explain_bench_failure "$label" "backlog-bench.log"
    stop_broker
}

run_backlog() {
    : >"$OUT/backlog.jsonl"
    printf 'start\t%s\n' "$(cut -d' ' -f1 /proc/loadavg)" >"$OUT/backlog-load.tsv"
    meta backlog.messages "$BACKLOG_MESSAGES"
    meta backlog.size "$BACKLOG_SIZE"
    meta backlog.page_bytes "$BACKLOG_PAGE_BYTES"
    meta backlog.rounds "$BACKLOG_ROUNDS"
    meta backlog.producers "$BACKLOG_PRODUCERS"
    meta backlog.consumers "$BACKLOG_CONSUMERS"
    local round setups=()
    if [[ " ${TARGETS[*]} " == *" duomq "* ]]; then setups+=(duomq-memory duomq-paged); fi
    if [[ " ${TARGETS[*]} " == *" activemq "* ]]; then setups+=(activemq); fi
    for ((round = 1; round <= BACKLOG_ROUNDS; round++)); do
        for setup in "${setups[@]}"; do
            backlog_cell "$setup" "$round"
        done
    done
}
