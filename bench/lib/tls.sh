# shellcheck shell=bash disable=SC2034 # RUNNING_STOP and BROKER_PID are read by brokers.sh
# The TLS section of bench/compare.sh (issue 17): what stomp+ssl:// costs duomq against
# plaintext STOMP on the same load, and duomq over TLS beside ActiveMQ's stomp+ssl
# transport.
#
# Certificates: one throwaway CA and one loopback certificate from it ('duomq-bench
# test-certs', i.e. duomq_broker::tls::pki, ECDSA P-256), in WORK/tls. duomq reads the PEM
# files (tls.certFile, tls.keyFile, tls.caFile, tls.stomp.enabled); ActiveMQ gets the same
# certificate and key packed into a PKCS12 keystore with 'openssl pkcs12 -export'. The
# load generator trusts the CA (--ca-file) and checks the certificate against 127.0.0.1.
#
# Cells (tls.jsonl, one 'duomq-bench run --json' line each), 1 KiB persistent messages
# with receipts, client-individual acks, prefetch PREFETCH, --duration after --warmup, the
# same load as the matrix's cells of the same name:
#   p-1k-w64       1 producer, 1 consumer, 64 receipts in flight
#   p-1k-4x4-w64   4 producers, 4 consumers, 64 receipts in flight each
# on these setups, labelled tls/SETUP/CELL/rROUND:
#   duomq-plain     one duomq broker, plaintext STOMP (the matrix's broker)
#   duomq-tls       one duomq broker, its STOMP listener on TLS only
#   activemq-plain  one ActiveMQ broker (bench/lib/activemq-ssl.xml: the matrix's
#   activemq-tls    broker with a stomp+ssl connector beside the plaintext one), each
#                   cell on one connector or the other
# TLS_ROUNDS rounds; every broker starts afresh each round, and every other round runs
# TLS first, so a drifting disk or a neighbour's load weighs on both alike. The report
# (tls-report.py) compares medians.
#
# Sourced by compare.sh after brokers.sh (it uses start_duomq, activemq_command,
# stop_broker, stop_activemq, free_ports, probe, bench_json, fail_cell, meta and WORK, LOG_DIR,
# LIB_DIR, BENCH, OUT, STAMP, DURATION, WARMUP, PREFETCH, CELL_TIMEOUT, START_TIMEOUT,
# TARGETS and TLS_ROUNDS).

# id|producers|consumers|size|window|title, as in the matrix (all persistent).
TLS_CELLS=(
    "p-1k-w64|1|1|1024|64|1 KiB persistent 1P+1C w64"
    "p-1k-4x4-w64|4|4|1024|64|1 KiB persistent 4P+4C w64"
)
TLS_DIR=''
TLS_P12_PASSWORD=''

# tls_files: the CA, the broker's certificate and key, the PKCS12 keystore, and the
# duomq config that turns its STOMP listener to TLS.
tls_files() {
    TLS_DIR="$WORK/tls"
    mkdir -p "$TLS_DIR"
    "$BENCH" test-certs --dir "$TLS_DIR" --cn "duomq-bench broker" >>"$LOG_DIR/tls-certs.log" 2>&1 || return 1
    TLS_P12_PASSWORD="bench-$RANDOM$RANDOM$RANDOM"
    openssl pkcs12 -export -in "$TLS_DIR/broker.crt" -inkey "$TLS_DIR/broker.key" \
        -certfile "$TLS_DIR/ca.crt" -name duomqbench -out "$TLS_DIR/broker.p12" \
        -passout "pass:$TLS_P12_PASSWORD" >>"$LOG_DIR/tls-certs.log" 2>&1 || return 1
    cat >"$TLS_DIR/duomq-tls.yaml" <<YAML
tls:
  certFile: $TLS_DIR/broker.crt
  keyFile: $TLS_DIR/broker.key
  caFile: $TLS_DIR/ca.crt
  stomp:
    enabled: true
YAML
}

# start_duomq_setup plain|tls: a fresh duomq broker (new data directory); sets BROKER_URL
# (stomp:// or stomp+ssl://) and BROKER_PID.
start_duomq_setup() {
    rm -rf "$WORK/duomq"
    if [[ $1 == tls ]]; then
        DUOMQ_LOG=tls-duomq-tls start_duomq --config "$TLS_DIR/duomq-tls.yaml" || return 1
        BROKER_URL="stomp+ssl://${BROKER_URL#stomp://}"
        # /readyz says the broker is up; this says its listener speaks TLS with our CA.
        probe await-stomp --url "$BROKER_URL" --ca-file "$TLS_DIR/ca.crt" --timeout "$START_TIMEOUT" \
            --pid "$BROKER_PID" 2>>"$LOG_DIR/tls-duomq-tls.log" || { stop_broker; return 1; }
    else
        DUOMQ_LOG=tls-duomq-plain start_duomq
    fi
}

# start_activemq_tls: a fresh ActiveMQ broker with a plaintext STOMP connector and a
# stomp+ssl one; sets TLS_ACTIVEMQ_URL[plain|tls] and BROKER_PID.
declare -A TLS_ACTIVEMQ_URL=()
start_activemq_tls() {
    local base="$WORK/activemq-tls" stomp ssl
    rm -rf "$base"
    mkdir -p "$base/conf" "$base/data" "$base/tmp"
    cp "$LIB_DIR/activemq-ssl.xml" "$base/conf/activemq.xml"
    cp "$LIB_DIR/activemq-log4j.properties" "$base/conf/log4j.properties"
    read -r stomp ssl <<<"$(free_ports 2)"
    activemq_command "$base" "$stomp" "$base/conf/activemq.xml"
    # The extra system properties go before -jar and its three arguments.
    local cmd=("${ACTIVEMQ_CMD[@]:0:${#ACTIVEMQ_CMD[@]}-4}"
        -Dduomqbench.sslPort="$ssl"
        -Dduomqbench.keyStore="$TLS_DIR/broker.p12"
        -Dduomqbench.keyStorePassword="$TLS_P12_PASSWORD"
        "${ACTIVEMQ_CMD[@]: -4}")
    setsid "${cmd[@]}" </dev/null >"$LOG_DIR/tls-activemq.log" 2>&1 &
    ACTIVEMQ_PID=$!
    RUNNING_STOP=stop_activemq
    TLS_ACTIVEMQ_URL=([plain]="stomp://127.0.0.1:$stomp" [tls]="stomp+ssl://127.0.0.1:$ssl")
    if ! probe await-stomp --url "${TLS_ACTIVEMQ_URL[plain]}" --timeout "$START_TIMEOUT" --pid "$ACTIVEMQ_PID" ||
        ! probe await-stomp --url "${TLS_ACTIVEMQ_URL[tls]}" --ca-file "$TLS_DIR/ca.crt" \
            --timeout "$START_TIMEOUT" --pid "$ACTIVEMQ_PID"; then
        stop_broker
        return 1
    fi
    BROKER_PID=$ACTIVEMQ_PID
}

# tls_cell SETUP ROUND URL PID CELL: one duomq-bench run, its JSON line into tls.jsonl.
tls_cell() {
    local setup=$1 round=$2 url=$3 pid=$4 id producers consumers size window title
    IFS='|' read -r id producers consumers size window title <<<"$5"
    local label="tls/$setup/$id/r$round"
    local args=(run --url "$url" --destination "/queue/tls-$setup-$id-r$round-$STAMP"
        --producers "$producers" --consumers "$consumers" --size "$size" --window "$window" --persistent
        --duration "$DURATION" --warmup "$WARMUP" --prefetch "$PREFETCH" --ack client-individual
        --subscribe-header "activemq.prefetchSize=$PREFETCH" --broker-pid "$pid" --label "$label" --json)
    [[ $url == stomp+ssl://* ]] && args+=(--ca-file "$TLS_DIR/ca.crt")
    printf '%s\t%s\n' "$label" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/tls-load.tsv"
    log "$label: ${title} (${DURATION} after ${WARMUP} warm-up)"
    bench_json "$label" "$OUT/tls.jsonl" "tls-$setup.log" "$CELL_TIMEOUT" "${args[@]}"
}

# fail_tls_cells SETUP ROUND REASON: every cell of SETUP in ROUND failed for REASON.
fail_tls_cells() {
    local c
    for c in "${TLS_CELLS[@]}"; do
        fail_cell "tls/$1/${c%%|*}/r$2" "$3"
    done
}

run_tls() {
    : >"$OUT/tls.jsonl"
    printf 'start\t%s\n' "$(cut -d' ' -f1 /proc/loadavg)" >"$OUT/tls-load.tsv"
    meta tls.openssl "$(openssl version 2>/dev/null)"
    if [[ " ${TARGETS[*]} " == *" activemq "* ]]; then
        meta tls.java "$(java -version 2>&1 | head -n 1)"
    fi
    if ! tls_files; then
        fail_cell tls "could not make the test certificates (see logs/tls-certs.log)"
        return
    fi
    local round transport c order
    for ((round = 1; round <= TLS_ROUNDS; round++)); do
        order=(plain tls)
        ((round % 2 == 1)) || order=(tls plain)
        if [[ " ${TARGETS[*]} " == *" duomq "* ]]; then
            for transport in "${order[@]}"; do
                log "tls/duomq-$transport: round $round of $TLS_ROUNDS, starting the broker"
                if start_duomq_setup "$transport"; then
                    for c in "${TLS_CELLS[@]}"; do
                        tls_cell "duomq-$transport" "$round" "$BROKER_URL" "$BROKER_PID" "$c"
                    done
                else
                    fail_tls_cells "duomq-$transport" "$round" "the broker did not start (see logs/tls-duomq-$transport.log)"
                fi
                stop_broker
            done
        fi
        if [[ " ${TARGETS[*]} " == *" activemq "* ]]; then
            log "tls/activemq: round $round of $TLS_ROUNDS, starting the broker (stomp and stomp+ssl connectors)"
            if start_activemq_tls; then
                for transport in "${order[@]}"; do
                    for c in "${TLS_CELLS[@]}"; do
                        tls_cell "activemq-$transport" "$round" "${TLS_ACTIVEMQ_URL[$transport]}" "$BROKER_PID" "$c"
                    done
                done
            else
                for transport in plain tls; do
                    fail_tls_cells "activemq-$transport" "$round" "the broker did not start (see logs/tls-activemq.log)"
                done
            fi
            stop_broker
        fi
    done
}
