# shellcheck shell=bash
# The selectors section of bench/compare.sh (issue 18): what consuming through JMS
# selectors costs against plain consumers at the same load, on duomq and on ActiveMQ.
#
# Load (selectors.jsonl, one 'duomq-bench run --json' line per cell): 1 KiB persistent
# messages, SELECTORS_PRODUCERS producers with 64 receipts in flight each, 2 consumers
# (client-individual acks, prefetch PREFETCH), --duration after --warmup. Every message
# carries the header colour, red and blue in turn (--header-cycle colour=red,blue). Cells,
# labelled selectors/SETUP/rROUND:
#   SYSTEM-plain     the two consumers subscribe without a selector
#   SYSTEM-selector  consumer 0 subscribes with selector "colour = 'red'", consumer 1 with
#                    "colour = 'blue'": complementary selectors matching half the messages
#                    each (--selector-split); every delivery is checked against its
#                    consumer's selector and a mismatch fails the cell
# for SYSTEM duomq (the matrix's broker, defaults) and activemq (the matrix's ActiveMQ). One
# broker per system and round, both cells back to back on fresh queues, the selector cell
# first every other round. The report (selectors-report.py) prints selector/plain per
# system (median of the rounds' ratios) and duomq/ActiveMQ for the selector cell.
#
# Sourced by compare.sh after brokers.sh and backlog.sh (it uses explain_bench_failure,
# start_duomq, start_activemq, stop_broker, bench_json, fail_cell, meta and LOG_DIR, OUT,
# STAMP, DURATION, WARMUP, PREFETCH, CELL_TIMEOUT, TARGETS and SELECTORS_ROUNDS).

SELECTORS_PRODUCERS=2

# selectors_cell SYSTEM KIND ROUND: one cell against the broker that is up.
selectors_cell() {
    local system=$1 kind=$2 round=$3 label="selectors/$1-$2/r$3"
    local args=(run --url "$BROKER_URL" --destination "/queue/selectors-$system-$kind-r$round-$STAMP"
        --producers "$SELECTORS_PRODUCERS" --consumers 2 --size 1024 --persistent --window 64
        --duration "$DURATION" --warmup "$WARMUP" --prefetch "$PREFETCH" --ack client-individual
        --subscribe-header "activemq.prefetchSize=$PREFETCH" --header-cycle colour=red,blue
        --broker-pid "$BROKER_PID" --label "$label" --json)
    [[ $kind == selector ]] && args+=(--selector-split)
    printf '%s\t%s\n' "$label" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/selectors-load.tsv"
    log "$label: 1 KiB persistent ${SELECTORS_PRODUCERS}P+2C w64 (${DURATION} after ${WARMUP} warm-up)"
    bench_json "$label" "$OUT/selectors.jsonl" "selectors-$system.log" "$CELL_TIMEOUT" "${args[@]}"
    explain_bench_failure "$label" "selectors-$system.log"
}

run_selectors() {
    : >"$OUT/selectors.jsonl"
    printf 'start\t%s\n' "$(cut -d' ' -f1 /proc/loadavg)" >"$OUT/selectors-load.tsv"
    meta selectors.rounds "$SELECTORS_ROUNDS"
    meta selectors.producers "$SELECTORS_PRODUCERS"
    local round system kind order
    for ((round = 1; round <= SELECTORS_ROUNDS; round++)); do
        order=(plain selector)
        ((round % 2 == 1)) || order=(selector plain)
        for system in duomq activemq; do
            [[ " ${TARGETS[*]} " == *" $system "* ]] || continue
            log "selectors/$system: round $round of $SELECTORS_ROUNDS, starting the broker"
            if ! "start_$system"; then
                for kind in plain selector; do
                    fail_cell "selectors/$system-$kind/r$round" "the broker did not start (see logs/$system.log)"
                done
                continue
            fi
            for kind in "${order[@]}"; do
                selectors_cell "$system" "$kind" "$round"
            done
            stop_broker
        done
    done
}
