# shellcheck shell=bash disable=SC2034 # RUNNING_STOP and BROKER_* are read by brokers.sh
# The AMQP 1.0 section of bench/compare.sh (issue 19): duomq's AMQP listener beside
# RabbitMQ's AMQP 1.0 plugin and ActiveMQ's AMQP transport, with one load client for all
# ('duomq-bench amqp', fe2o3-amqp's client).
#
# Cells (amqp.jsonl, one 'duomq-bench amqp --json' line each), 1 KiB messages with
# header durable=true, --duration after --warmup, labelled amqp/SYSTEM/CELL/rROUND:
#   p-1k-1x1-c1    1 producer, 1 consumer, credit 1 (each transfer waits for its outcome,
#                  each consumer has one message of credit)
#   p-1k-1x1-c64   the same with 64: 64 unsettled transfers per producer, 64 credit
#   p-1k-4x4-c1    4 producers, 4 consumers, credit 1
#   p-1k-4x4-c64   4 producers, 4 consumers, credit 64
# on these systems:
#   duomq     the matrix's broker (fsync before a persistent message is settled accepted)
#             with amqp.enabled; address queue://NAME
#   rabbitmq  the Debian package's RabbitMQ 3.10 with the rabbitmq_amqp1_0 plugin (and
#             rabbitmq_stomp, which declares the queue: durable classic, as the matrix's
#             rabbitmq-classic), guest on loopback; address /amq/queue/NAME. It settles a
#             durable message accepted once it is confirmed (on disk, as a publisher confirm)
#   activemq  measured only when its AMQP transport is installed; Debian's ActiveMQ 5.17
#             package ships none (no activemq-amqp jar, no proton-j), and then the report
#             says so instead of a figure
# AMQP_ROUNDS rounds; in each, every system starts afresh and runs the four cells on fresh
# queues (RabbitMQ first every other round), after the disk's fsync rate is measured
# (fsync-amqp-rROUND.json). The report (amqp-report.py) prints the medians and duomq over
# the best peer per cell.
#
# Sourced by compare.sh after brokers.sh (it uses start_duomq, start_rabbitmq,
# stop_broker, free_ports, probe, bench_json, fail_cell, meta, log, measure_fsync and WORK,
# LOG_DIR, OUT,
# STAMP, DURATION, WARMUP, CELL_TIMEOUT, TARGETS, MATRIX, ACTIVEMQ_HOME, RABBITMQ_VHOST
# and AMQP_ROUNDS).

# id|producers|consumers|size|credit|title (all persistent).
AMQP_CELLS=(
    "p-1k-1x1-c1|1|1|1024|1|1 KiB persistent 1P+1C credit 1"
    "p-1k-1x1-c64|1|1|1024|64|1 KiB persistent 1P+1C credit 64"
    "p-1k-4x4-c1|4|4|1024|1|1 KiB persistent 4P+4C credit 1"
    "p-1k-4x4-c64|4|4|1024|64|1 KiB persistent 4P+4C credit 64"
)
# Set by the start functions: the AMQP URL of the broker that is up.
AMQP_URL=''

# activemq_amqp_jars: the jars of ActiveMQ's AMQP transport under ACTIVEMQ_HOME, one a
# line (none: ActiveMQ cannot speak AMQP there).
activemq_amqp_jars() {
    find "$ACTIVEMQ_HOME/lib" \( -name 'activemq-amqp*.jar' -o -name 'proton-j*.jar' \) 2>/dev/null
}

# start_duomq_amqp ROUND: the matrix's duomq broker with its AMQP listener on as well, on
# an empty data directory.
start_duomq_amqp() {
    local port
    port=$(free_ports 1)
    rm -rf "$WORK/duomq"
    mkdir -p "$WORK/duomq-amqp"
    printf 'amqp:\n  enabled: true\n  listen: 127.0.0.1:%s\n' "$port" >"$WORK/duomq-amqp/broker.yaml"
    start_duomq --config "$WORK/duomq-amqp/broker.yaml" || return 1
    AMQP_URL="amqp://127.0.0.1:$port"
}

# start_rabbitmq_amqp ROUND: a fresh RabbitMQ node (its own directory and logs per round)
# with the AMQP 1.0 plugin beside STOMP's. The plugin serves AMQP 1.0 on the node's AMQP
# port (RABBIT_AMQP_PORT, the 0-9-1 listener).
start_rabbitmq_amqp() {
    start_rabbitmq "rabbitmq-amqp-r$1" "rabbitmq_stomp,rabbitmq_amqp1_0" || return 1
    AMQP_URL="amqp://$BROKER_LOGIN:$BROKER_PASSCODE@127.0.0.1:$RABBIT_AMQP_PORT"
}

# amqp_backlog PRODUCERS CONSUMERS CREDIT: the cell's bound on messages sent and not yet
# received (duomq-bench amqp --max-backlog): twice what its links may hold at once, each
# producer's CREDIT unsettled transfers and each consumer's CREDIT of link credit. A broker
# whose consumers keep up never reaches it; one whose producers outrun its consumers holds
# that many, about 40 ms at 25,000 msg/s, instead of a queue that grows for the whole cell.
amqp_backlog() {
    echo $((2 * ($1 + $2) * $3))
}

# amqp_cell SYSTEM ROUND CELL: one cell against the broker that is up.
amqp_cell() {
    local system=$1 round=$2 id producers consumers size credit title
    IFS='|' read -r id producers consumers size credit title <<<"$3"
    local label="amqp/$system/$id/r$round" queue="amqp-$system-$id-r$round-$STAMP" address
    case $system in
    duomq) address="queue://$queue" ;;
    rabbitmq)
        # A durable classic queue, declared over STOMP: /amq/queue/ names a queue that exists.
        address="/amq/queue/$queue"
        if ! probe declare --url "stomp://$BROKER_LOGIN:$BROKER_PASSCODE@${BROKER_URL#stomp://}" \
            --vhost "$RABBITMQ_VHOST" --destination "/queue/$queue" --header durable=true \
            --header auto-delete=false 2>>"$LOG_DIR/amqp-$system.log"; then
            fail_cell "$label" "could not declare queue $queue (see logs/amqp-$system.log)"
            return
        fi
        ;;
    esac
    # Closed-loop (see amqp_backlog): msg/s is the rate the consumers sustain.
    local args=(amqp --url "$AMQP_URL" --address "$address" --producers "$producers" --consumers "$consumers"
        --size "$size" --persistent --credit "$credit" --duration "$DURATION" --warmup "$WARMUP"
        --max-backlog "$(amqp_backlog "$producers" "$consumers" "$credit")"
        --broker-pid "$BROKER_PID" --label "$label" --json)
    printf '%s\t%s\n' "$label" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/amqp-load.tsv"
    log "$label: ${title} (${DURATION} after ${WARMUP} warm-up)"
    bench_json "$label" "$OUT/amqp.jsonl" "amqp-$system.log" "$CELL_TIMEOUT" "${args[@]}"
}

# amqp_system SYSTEM ROUND: start SYSTEM's broker, run every cell, stop it.
amqp_system() {
    local system=$1 round=$2 c
    log "amqp/$system: round $round of $AMQP_ROUNDS, starting the broker"
    if ! "start_${system}_amqp" "$round"; then
        for c in "${AMQP_CELLS[@]}"; do
            fail_cell "amqp/$system/${c%%|*}/r$round" "the broker did not start (see logs/)"
        done
        stop_broker
        return
    fi
    for c in "${AMQP_CELLS[@]}"; do
        amqp_cell "$system" "$round" "$c"
    done
    stop_broker
}

run_amqp() {
    : >"$OUT/amqp.jsonl"
    printf 'start\t%s\n' "$(cut -d' ' -f1 /proc/loadavg)" >"$OUT/amqp-load.tsv"
    meta amqp.rounds "$AMQP_ROUNDS"
    meta amqp.backlog "closed-loop: producers wait while 2 x (producers + consumers) x credit messages are sent and not yet received"
    local systems=() round system
    [[ " ${TARGETS[*]} " == *" duomq "* ]] && systems+=(duomq)
    if [[ " ${TARGETS[*]} " == *" rabbitmq-"* ]]; then
        systems+=(rabbitmq)
        [[ $MATRIX == yes ]] || meta version.rabbitmq "RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server) on Erlang $(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo '?')"
    fi
    if [[ " ${TARGETS[*]} " == *" activemq "* ]]; then
        if [[ -z $(activemq_amqp_jars) ]]; then
            meta amqp.activemq "not available: Debian's ActiveMQ $(dpkg-query -W -f='${Version}' activemq 2>/dev/null | cut -d+ -f1) package ships no AMQP transport (no activemq-amqp or proton-j jar under $ACTIVEMQ_HOME/lib)"
        else
            meta amqp.activemq "not measured: ActiveMQ's AMQP transport is installed ($(activemq_amqp_jars | xargs -n1 basename | paste -sd' ')), but compare.sh has no AMQP configuration for ActiveMQ"
        fi
    fi
    for ((round = 1; round <= AMQP_ROUNDS; round++)); do
        # What the disk allows this round: a credit-1 cell waits for an fdatasync per message.
        measure_fsync "amqp-r$round"
        local order=("${systems[@]}")
        if ((round % 2 == 0 && ${#systems[@]} == 2)); then order=("${systems[1]}" "${systems[0]}"); fi
        for system in "${order[@]}"; do
            amqp_system "$system" "$round"
        done
    done
}
