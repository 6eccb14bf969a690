# shellcheck shell=bash
# The replication-cost section of bench/compare.sh: what synchronous replication to a
# backup costs at window 64. Rounds alternate one duomq broker and a live/backup pair
# (the failover section's pair, fileLock arbiter), so a disk whose fsync latency drifts
# from minute to minute weighs on both alike; the report compares the medians. Sourced
# by compare.sh after failover.sh; uses its WORK, LOG_DIR, BENCH, OUT, DURATION, WARMUP,
# PREFETCH, STAMP, REPLICATION_ROUNDS and REPLICATION_ACKS.

# replication_cell LABEL URL PID: one 1 KiB persistent 1P+1C window-64 run, JSON appended
# to replication.jsonl.
replication_cell() {
    local label=$1 url=$2 pid=$3 out="$WORK/replication.json" rc=0
    timeout --foreground -k 10 "$CELL_TIMEOUT" "$BENCH" run --url "$url" \
        --destination "/queue/replication-$STAMP-$RANDOM" --producers 1 --consumers 1 --size 1024 \
        --window 64 --persistent --duration "$DURATION" --warmup "$WARMUP" --prefetch "$PREFETCH" \
        --ack client-individual --subscribe-header "activemq.prefetchSize=$PREFETCH" \
        --broker-pid "$pid" --label "$label" --json >"$out" 2>>"$LOG_DIR/replication.log" || rc=$?
    if ((rc != 0)) || ! python3 -c 'import json, sys; json.loads(open(sys.argv[1]).read())' "$out" 2>/dev/null; then
        fail_cell "$label" "duomq-bench failed (exit $rc, see logs/replication.log)"
        return
    fi
    cat "$out" >>"$OUT/replication.jsonl"
}

run_replication_cost() {
    local round ack
    for ((round = 1; round <= REPLICATION_ROUNDS; round++)); do
        log "replication/single: round $round of $REPLICATION_ROUNDS"
        if start_duomq; then
            replication_cell "replication/single" "$BROKER_URL" "$BROKER_PID"
        else
            fail_cell "replication/single" "the broker did not start (see logs/duomq.log)"
        fi
        stop_broker
        for ack in ${REPLICATION_ACKS//,/ }; do
            log "replication/pair-$ack: round $round of $REPLICATION_ROUNDS (ha.backupAck: $ack)"
            rm -rf "$WORK/failover-duomq"
            if DUOMQ_BACKUP_ACK=$ack start_duomq_pair; then
                replication_cell "replication/pair-$ack" "stomp://127.0.0.1:${DUOMQ_STOMP[a]}" "$(member_pid a)"
            else
                fail_cell "replication/pair-$ack" "the pair did not start (see logs/failover-duomq-*.log)"
            fi
            stop_broker
        done
    done
}
