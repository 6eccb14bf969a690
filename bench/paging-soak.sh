#!/usr/bin/env bash
# The paging soak of issue 18: a release duomq broker with a small memory budget takes a
# backlog of millions of persistent messages into one queue nobody consumes (paged to the
# journal), then one consumer drains it; the broker's RSS is sampled every second
# throughout. `bench/paging-soak.sh --help` explains it all.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
LIB_DIR=$BENCH_DIR/lib

MESSAGES=10000000
SIZE=1024
PRODUCERS=4
WINDOW=64
PREFETCH=1000
RSS_LIMIT_MIB=128
PAGE_BYTES=4MiB
QUEUE_BYTES=8MiB
BROKER_BYTES=32MiB
KILL_DURING_DRAIN=no
WORK=
KEEP=no
START_TIMEOUT=600
DESTINATION=/queue/soak

usage() {
    cat <<EOF
Usage: bench/paging-soak.sh [--messages N] [--size BYTES] [--producers N]
                            [--rss-limit MIB] [--page-bytes SIZE] [--kill-during-drain]
                            [--work DIR] [--keep]

Fills one queue with N persistent messages while nobody consumes it, then drains it with
one consumer, against a release duomq broker whose memory budget is a small fraction of
the backlog: the queue pages (addressFullPolicy: page), so the backlog waits in the
journal and is read back as the consumer catches up. Checks that the broker's RSS stays
below a limit throughout and that nothing is lost or reordered.

  1. Builds duomq-broker and duomq-bench in release mode (or uses DUOMQ_BROKER and
     DUOMQ_BENCH when both are set).
  2. Starts the broker with memory.maxQueueBytes $QUEUE_BYTES, maxBrokerBytes $BROKER_BYTES
     and addressSettings '>' maxSizeBytes --page-bytes, addressFullPolicy page; fsync on.
  3. 'duomq-bench run --backlog N': --producers producers (window $WINDOW receipts each)
     send N messages of --size bytes to $DESTINATION; once every one is receipted, one
     consumer (client-individual acks, prefetch $PREFETCH) takes them all.
  4. Samples the broker's VmRSS (/proc/PID/status) and the queue's depth + paged count
     (admin /status) every second into WORK/rss.tsv, and reads the broker's VmHWM (peak
     RSS, which no sampling misses) before each stop.
  5. With --kill-during-drain: once half the backlog is drained, kills the broker with
     SIGKILL, starts it again on the same ports (the consumer's failover client
     reconnects) and reports the restart's time and peak RSS (the recovery's, from VmHWM).

Prints the fill and drain rates, the peak RSS per phase, the RSS by backlog size (per
million messages) and the load average. Exits non-zero when the peak RSS reaches
--rss-limit, when a receipted message was never delivered, when a producer's messages
came out of order, or when a step fails. Needs about N x (SIZE + 150) bytes free under
WORK (10 million 1 KiB messages: about 11 GiB).

Options:
  --messages N          Messages in the backlog (default $MESSAGES).
  --size BYTES          Body size (default $SIZE).
  --producers N         Producer connections (default $PRODUCERS).
  --rss-limit MIB       Fail when the broker's peak RSS reaches this (default $RSS_LIMIT_MIB).
  --page-bytes SIZE     The queue's maxSizeBytes (default $PAGE_BYTES).
  --kill-during-drain   SIGKILL and restart the broker half way through the drain (the run
                        fails if the drain ends before the kill).
  --work DIR            Where the broker's data and the logs go (default: a new directory
                        under \${TMPDIR:-/tmp}); deleted at the end unless --keep.
  --keep                Keep the work directory (data, broker.log, bench.log, rss.tsv).
  -h, --help            This text.
EOF
}

die() {
    echo "paging-soak: $*" >&2
    exit 2
}

log() { echo "paging-soak: $*" >&2; }

while (($#)); do
    case $1 in
        --messages) MESSAGES=${2:?--messages needs a number}; shift 2 ;;
        --size) SIZE=${2:?--size needs a size}; shift 2 ;;
        --producers) PRODUCERS=${2:?--producers needs a number}; shift 2 ;;
        --rss-limit) RSS_LIMIT_MIB=${2:?--rss-limit needs MiB}; shift 2 ;;
        --page-bytes) PAGE_BYTES=${2:?--page-bytes needs a size}; shift 2 ;;
        --kill-during-drain) KILL_DURING_DRAIN=yes; shift ;;
        --work) WORK=${2:?--work needs a directory}; shift 2 ;;
        --keep) KEEP=yes; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done
[[ $MESSAGES =~ ^[1-9][0-9]*$ ]] || die "--messages must be a positive number, not $MESSAGES"
[[ $PRODUCERS =~ ^[1-9][0-9]*$ ]] || die "--producers must be a positive number, not $PRODUCERS"
[[ $RSS_LIMIT_MIB =~ ^[1-9][0-9]*$ ]] || die "--rss-limit must be a positive number of MiB, not $RSS_LIMIT_MIB"
for tool in python3 curl jq; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

if [[ -n ${DUOMQ_BROKER:-} && -n ${DUOMQ_BENCH:-} ]]; then
    BROKER_BIN=$DUOMQ_BROKER
    BENCH=$DUOMQ_BENCH
else
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain, or set DUOMQ_BROKER and DUOMQ_BENCH"
    log "building duomq-broker and duomq-bench (release)"
    (cd "$ROOT" && cargo build --release -p duomq-broker -p duomq-bench) >&2 || die "cargo build failed"
    target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BROKER_BIN=$target_dir/release/duomq-broker
    BENCH=$target_dir/release/duomq-bench
fi

if [[ -z $WORK ]]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/duomq-paging-soak.XXXXXX")
else
    mkdir -p "$WORK"
fi
WORK=$(cd "$WORK" && pwd)
DATA=$WORK/data
BROKER_PID=
SAMPLER_PID=
BENCH_PID=

cleanup() {
    local pid
    for pid in "$BENCH_PID" "$SAMPLER_PID" "$BROKER_PID"; do
        [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP == yes ]]; then
        log "kept $WORK"
    else
        rm -rf "${WORK:?}"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r STOMP_PORT ADMIN_PORT <<<"$(python3 "$LIB_DIR/probe.py" free-ports 2 | tr '\n' ' ')"
mkdir -p "$DATA"
cat >"$WORK/broker.yaml" <<YAML
node:
  id: paging-soak
stomp:
  listen: 127.0.0.1:$STOMP_PORT
admin:
  listen: 127.0.0.1:$ADMIN_PORT
storage:
  dataDir: $DATA
memory:
  maxQueueBytes: $QUEUE_BYTES
  maxBrokerBytes: $BROKER_BYTES
addressSettings:
  - match: ">"
    maxSizeBytes: $PAGE_BYTES
    addressFullPolicy: page
YAML

# vm_kib PID FIELD: a /proc/PID/status memory field (VmRSS, VmHWM) in KiB; 0 if gone.
vm_kib() {
    local status
    status=$(cat "/proc/${1:-0}/status" 2>/dev/null) || status=
    awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print 0 }' <<<"$status"
}

phase() { echo "$1" >"$WORK/phase"; }

# start_broker: starts the broker on the config's ports, waits for /readyz; sets BROKER_PID.
start_broker() {
    "$BROKER_BIN" run --config "$WORK/broker.yaml" >>"$WORK/broker.log" 2>&1 &
    BROKER_PID=$!
    echo "$BROKER_PID" >"$WORK/broker.pid"
    python3 "$LIB_DIR/probe.py" await-http --url "http://127.0.0.1:$ADMIN_PORT/readyz" \
        --timeout "$START_TIMEOUT" --pid "$BROKER_PID" ||
        die "the broker did not become ready (see $WORK/broker.log; --keep keeps it)"
}

# sample: every second, one line to rss.tsv: seconds since start, phase, VmRSS in KiB and
# the queue's depth + paged count (- when /status did not answer).
sample() {
    local started=$SECONDS pid backlog
    while true; do
        pid=$(cat "$WORK/broker.pid" 2>/dev/null || true)
        backlog=$(backlog)
        printf '%s\t%s\t%s\t%s\n' "$((SECONDS - started))" "$(cat "$WORK/phase")" "$(vm_kib "$pid" VmRSS)" "${backlog:--}" \
            >>"$WORK/rss.tsv"
        sleep 1
    done
}

journal_bytes() { du -sb "$DATA/journal" 2>/dev/null | cut -f1; }

# backlog: the queue's depth + paged count from /status (empty when it did not answer).
backlog() {
    curl -fsS --max-time 1 "http://127.0.0.1:$ADMIN_PORT/status" 2>/dev/null |
        jq -r --arg q "$DESTINATION" '[.queues[]? | select(.name == $q) | .depth + .paged] | first // empty' 2>/dev/null || true
}

phase start
: >"$WORK/rss.tsv"
start_broker
RSS_IDLE_KIB=$(vm_kib "$BROKER_PID" VmRSS)
sample &
SAMPLER_PID=$!

URL="stomp://127.0.0.1:$STOMP_PORT"
if [[ $KILL_DURING_DRAIN == yes ]]; then
    URL="failover:($URL)?initialReconnectDelay=10ms&maxReconnectDelay=500ms&maxReconnectAttempts=-1"
fi
log "filling $DESTINATION with $MESSAGES x $SIZE B persistent messages ($PRODUCERS producers); work dir $WORK"
phase fill
"$BENCH" run --url "$URL" --destination "$DESTINATION" --backlog "$MESSAGES" --producers "$PRODUCERS" \
    --consumers 1 --size "$SIZE" --persistent --window "$WINDOW" --prefetch "$PREFETCH" \
    --ack client-individual --broker-pid "$BROKER_PID" --drain-timeout 24h --label paging-soak --json \
    >"$WORK/bench.json" 2>"$WORK/bench.log" &
BENCH_PID=$!

# Follow the run: the drain starts when the bench says the backlog is filled.
FILL_END_JOURNAL=
KILLED=no
RECOVERY_S=
RECOVERY_HWM_KIB=
HWM_BEFORE_KILL_KIB=0
while kill -0 "$BENCH_PID" 2>/dev/null; do
    sleep 0.2
    if [[ -z $FILL_END_JOURNAL ]] && grep -q 'backlog filled; draining' "$WORK/bench.log"; then
        FILL_END_JOURNAL=$(journal_bytes)
        phase drain
        log "filled; journal $((FILL_END_JOURNAL / 1048576)) MiB; draining"
    fi
    if [[ $KILL_DURING_DRAIN == yes && $KILLED == no && -n $FILL_END_JOURNAL ]] &&
        left=$(backlog) && [[ -n $left ]] && ((left <= MESSAGES / 2)); then
        HWM_BEFORE_KILL_KIB=$(vm_kib "$BROKER_PID" VmHWM)
        log "$left messages left: kill -9 of the broker (pid $BROKER_PID)"
        phase recovery
        kill -KILL "$BROKER_PID"
        wait "$BROKER_PID" 2>/dev/null || true
        restart_started=$SECONDS
        start_broker
        RECOVERY_S=$((SECONDS - restart_started))
        RECOVERY_HWM_KIB=$(vm_kib "$BROKER_PID" VmHWM)
        KILLED=yes
        phase drain-after-restart
        log "restarted in ${RECOVERY_S}s; recovery peak RSS $((RECOVERY_HWM_KIB / 1024)) MiB"
    fi
done
BENCH_STATUS=0
wait "$BENCH_PID" || BENCH_STATUS=$?
BENCH_PID=
FINAL_HWM_KIB=$(vm_kib "$BROKER_PID" VmHWM)
phase end
kill "$SAMPLER_PID" 2>/dev/null && wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

if [[ $KILL_DURING_DRAIN == yes && $KILLED == no ]]; then
    KEEP=yes
    die "the drain ended before half the backlog was left: no kill -9 happened (see $WORK/bench.log)"
fi
RESULT=$(tail -n 1 "$WORK/bench.json" 2>/dev/null || true)
if [[ $BENCH_STATUS -ne 0 || -z $RESULT ]] || ! jq -e .backlog >/dev/null 2>&1 <<<"$RESULT"; then
    tail -n 5 "$WORK/bench.log" >&2 || true
    KEEP=yes
    die "duomq-bench failed (exit $BENCH_STATUS); see $WORK/bench.log"
fi

# The report: rates and correctness from the bench, RSS from the samples and VmHWM.
python3 - "$WORK/rss.tsv" "$RESULT" "$RSS_LIMIT_MIB" "$RSS_IDLE_KIB" "$FINAL_HWM_KIB" "$HWM_BEFORE_KILL_KIB" \
    "${RECOVERY_HWM_KIB:-}" "${RECOVERY_S:-}" "$LOAD" "$MESSAGES" "$SIZE" "$PRODUCERS" "$PAGE_BYTES" <<'PY'
import json, sys
(tsv, result, limit, idle, hwm, hwm_before_kill, recovery_hwm, recovery_s, load, messages, size,
 producers, page_bytes) = sys.argv[1:]
r = json.loads(result)
b = r["backlog"]
mib = lambda kib: int(kib) / 1024
rows = []
with open(tsv) as f:
    for line in f:
        t, phase, rss, backlog = line.rstrip("\n").split("\t")
        rows.append((int(t), phase, int(rss), None if backlog in ("-", "null") else int(backlog)))
peak = {}
for _, phase, rss, _ in rows:
    if rss:
        peak[phase] = max(peak.get(phase, 0), rss)
print(f"paging soak: {int(messages):,} x {size} B persistent messages, {producers} producers, 1 consumer; "
      f"queue maxSizeBytes {page_bytes}, addressFullPolicy page")
print(f"fill:  {b['fill_s']:.0f} s, {b['fill_rate']:.0f} msg/s; peak RSS {mib(peak.get('fill', 0)):.0f} MiB (sampled)")
drain_peak = max(peak.get("drain", 0), peak.get("drain-after-restart", 0))
print(f"drain: {b['drain_s']:.0f} s, {b['drain_rate']:.0f} msg/s; peak RSS {mib(drain_peak):.0f} MiB (sampled)")
overall = max(int(hwm), int(hwm_before_kill))
if recovery_hwm:
    print(f"kill -9 half way through the drain: restart ready in {recovery_s} s; peak RSS of the restarted "
          f"broker through recovery {mib(recovery_hwm):.0f} MiB (VmHWM); before the kill {mib(hwm_before_kill):.0f} MiB (VmHWM)")
print(f"broker RSS: idle {mib(idle):.0f} MiB, peak {mib(overall):.0f} MiB (VmHWM), limit {limit} MiB")
# RSS by backlog: the first sample at or past each million (fill), at or below (drain).
step = 1_000_000 if int(messages) >= 2_000_000 else max(int(messages) // 10, 1)
marks = []
filling = [(n, rss) for _, phase, rss, n in rows if phase == "fill" and n is not None]
for k in range(step, int(messages) + 1, step):
    hit = next((rss for n, rss in filling if n >= k), None)
    if hit:
        marks.append(f"{k // 1000:,}k:{mib(hit):.0f}")
if marks:
    print("RSS (MiB) by backlog while filling: " + " ".join(marks))
marks = []
draining = [(n, rss) for _, phase, rss, n in rows if phase.startswith("drain") and n is not None]
for k in range(int(messages) - step, -1, -step):
    hit = next((rss for n, rss in draining if n <= k), None)
    if hit:
        marks.append(f"{k // 1000:,}k:{mib(hit):.0f}")
if marks:
    print("RSS (MiB) by backlog left while draining: " + " ".join(marks))
print(f"messages: confirmed {r['confirmed']:,}, lost {r['lost']}, duplicates {r['duplicates']}, "
      f"out of order {b['out_of_order']}; load average {load}")
failures = []
if overall >= int(limit) * 1024:
    failures.append(f"peak RSS {mib(overall):.0f} MiB reached the limit of {limit} MiB")
if r["lost"] or r["confirmed"] != int(messages):
    failures.append(f"{r['lost']} lost, {r['confirmed']:,} of {int(messages):,} confirmed")
if b["out_of_order"]:
    failures.append(f"{b['out_of_order']} out of order")
if r["errors"]:
    failures.append("errors: " + "; ".join(r["errors"]))
print("result: " + ("FAIL: " + "; ".join(failures) if failures else "PASS"))
sys.exit(1 if failures else 0)
PY
