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
#   duomq-plain     a duomq broker, plaintext STOMP (the matrix's broker)
#   duomq-tls       another one beside it, its STOMP listener on TLS only
#   activemq-plain  one ActiveMQ broker (bench/lib/activemq-ssl.xml: the matrix's
#   activemq-tls    broker with a stomp+ssl connector beside the plaintext one), each
#                   cell on one connector or the other
# TLS_ROUNDS rounds; every broker starts afresh each round. Within a round each cell runs
# on plaintext and on TLS back to back (TLS first every other round), so a disk whose
# fsync latency drifts from minute to minute, or a neighbour's load, weighs on both
# alike. The report (tls-report.py) compares medians.
#
# Sourced by compare.sh after brokers.sh and failover.sh (it uses write_duomq_member,
# member_pid, stop_pair, activemq_command, stop_broker, stop_activemq, free_ports, probe,
# bench_json, fail_cell, meta and WORK, LOG_DIR,
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
# tls: section that turns a duomq broker's STOMP listener to TLS.
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

# start_duomq_brokers: two fresh duomq brokers side by side, each with its own data
# directory: "plain" (plaintext STOMP) and "tls" (its STOMP listener on TLS only); sets
# TLS_DUOMQ_URL[plain|tls] and TLS_DUOMQ_PID[plain|tls]. Both stay up for the round, so
# the two transports' cells alternate minutes apart at most; an idle broker costs nothing.
declare -A TLS_DUOMQ_URL=() TLS_DUOMQ_PID=()
start_duomq_brokers() {
    FAILOVER_DIR="$WORK/tls-duomq"
    rm -rf "$FAILOVER_DIR"
    local p m
    read -r -a p <<<"$(free_ports 4)"
    declare -gA DUOMQ_STOMP=([plain]=${p[0]} [tls]=${p[1]}) DUOMQ_ADMIN=([plain]=${p[2]} [tls]=${p[3]})
    for m in plain tls; do
        write_duomq_member "$m" "tls-duomq-$m.log"
    done
    cat "$TLS_DIR/duomq-tls.yaml" >>"$FAILOVER_DIR/tls/broker.yaml"
    FAILOVER_MEMBERS=(plain tls)
    RUNNING_STOP=stop_pair
    TLS_DUOMQ_URL=([plain]="stomp://127.0.0.1:${p[0]}" [tls]="stomp+ssl://127.0.0.1:${p[1]}")
    for m in plain tls; do
        "$FAILOVER_DIR/$m/start.sh" &&
            probe await-http --url "http://127.0.0.1:${DUOMQ_ADMIN[$m]}/readyz" --timeout "$START_TIMEOUT" \
                --pid "$(member_pid "$m")" || return 1
        TLS_DUOMQ_PID[$m]=$(member_pid "$m")
    done
    # /readyz says the broker is up; this says its listener speaks TLS with our CA.
    probe await-stomp --url "${TLS_DUOMQ_URL[tls]}" --ca-file "$TLS_DIR/ca.crt" --timeout "$START_TIMEOUT" \
        --pid "${TLS_DUOMQ_PID[tls]}" 2>>"$LOG_DIR/tls-duomq-tls.log"
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

# tls_cells SYSTEM ROUND URL_ARRAY PID_ARRAY: every cell, plaintext and TLS in turn
# (TLS first in even rounds), on SYSTEM's brokers named in the two associative arrays.
tls_cells() {
    local system=$1 round=$2 c t order=(plain tls)
    local -n urls=$3 pids=$4
    ((round % 2 == 1)) || order=(tls plain)
    for c in "${TLS_CELLS[@]}"; do
        for t in "${order[@]}"; do
            tls_cell "$system-$t" "$round" "${urls[$t]}" "${pids[$t]}" "$c"
        done
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
    local round t
    for ((round = 1; round <= TLS_ROUNDS; round++)); do
        if [[ " ${TARGETS[*]} " == *" duomq "* ]]; then
            log "tls/duomq: round $round of $TLS_ROUNDS, starting a plaintext and a TLS broker"
            if start_duomq_brokers; then
                tls_cells duomq "$round" TLS_DUOMQ_URL TLS_DUOMQ_PID
            else
                for t in plain tls; do
                    fail_tls_cells "duomq-$t" "$round" "the brokers did not start (see logs/tls-duomq-$t.log)"
                done
            fi
            stop_broker
        fi
        if [[ " ${TARGETS[*]} " == *" activemq "* ]]; then
            log "tls/activemq: round $round of $TLS_ROUNDS, starting the broker (stomp and stomp+ssl connectors)"
            if start_activemq_tls; then
                local -A activemq_pid=([plain]=$BROKER_PID [tls]=$BROKER_PID)
                tls_cells activemq "$round" TLS_ACTIVEMQ_URL activemq_pid
            else
                for t in plain tls; do
                    fail_tls_cells "activemq-$t" "$round" "the broker did not start (see logs/tls-activemq.log)"
                done
            fi
            stop_broker
        fi
    done
}
