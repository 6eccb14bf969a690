#!/usr/bin/env bash
# Puts duomq beside ActiveMQ and RabbitMQ in one run on one machine, at equal
# durability, and prints the comparison. `bench/compare.sh --help` explains it all.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
LIB_DIR=$BENCH_DIR/lib

DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-3s}
PREFETCH=${BENCH_PREFETCH:-1000}
ONLY=${BENCH_ONLY:-duomq,activemq,rabbitmq}
FAILOVER=no
REPLICATION=no
REPLICATION_ROUNDS=${BENCH_REPLICATION_ROUNDS:-5}
REPLICATION_ACKS=written,synced
MATRIX=yes
FAILOVER_KILLS=${BENCH_FAILOVER_KILLS:-20}
FAILOVER_EVERY=${BENCH_FAILOVER_EVERY:-3s}
NETWORK=no
NETWORK_KILLS=${BENCH_NETWORK_KILLS:-5}
GROUPS_SECTION=no
GROUPS_ROUNDS=${BENCH_GROUPS_ROUNDS:-1}
DATABASE=no
DATABASE_KILLS=${BENCH_DATABASE_KILLS:-5}
DATABASE_ROUNDS=${BENCH_DATABASE_ROUNDS:-3}
TLS_SECTION=no
TLS_ROUNDS=${BENCH_TLS_ROUNDS:-5}
BACKLOG_SECTION=no
BACKLOG_MESSAGES=${BENCH_BACKLOG_MESSAGES:-200000}
BACKLOG_SIZE=${BENCH_BACKLOG_SIZE:-1024}
BACKLOG_PAGE_BYTES=${BENCH_BACKLOG_PAGE_BYTES:-1MiB}
BACKLOG_ROUNDS=${BENCH_BACKLOG_ROUNDS:-1}
SELECTORS_SECTION=no
SELECTORS_ROUNDS=${BENCH_SELECTORS_ROUNDS:-3}
AMQP_SECTION=no
AMQP_ROUNDS=${BENCH_AMQP_ROUNDS:-3}
OUT=${BENCH_OUT:-}
FSYNC_DURATION=3s
START_TIMEOUT=120
STOP_TIMEOUT=60

# The matrix: id|producers|consumers|size|persistent|window|title. The first cell is the
# synchronous one that the report compares with the disk's fsync rate.
CELLS=(
    "p-1k-w1|1|1|1024|yes|1|1 KiB persistent 1P+1C w1"
    "p-1k-w64|1|1|1024|yes|64|1 KiB persistent 1P+1C w64"
    "p-1k-4x4-w64|4|4|1024|yes|64|1 KiB persistent 4P+4C w64"
    "np-1k-w64|1|1|1024|no|64|1 KiB non-persistent 1P+1C w64"
    "p-64k-w16|1|1|65536|yes|16|64 KiB persistent 1P+1C w16"
)

usage() {
    cat <<EOF
Usage: bench/compare.sh [--quick] [--only LIST] [--out DIR] [--duration D] [--warmup D]
                        [--prefetch N] [--failover | --failover-only] [--failover-kills N]
                        [--replication | --replication-only] [--replication-rounds N]
                        [--network | --network-only] [--network-kills N]
                        [--groups | --groups-only] [--groups-rounds N]
                        [--database | --database-only] [--database-kills N]
                        [--database-rounds N] [--tls | --tls-only] [--tls-rounds N]
                        [--backlog | --backlog-only] [--backlog-messages N]
                        [--backlog-size BYTES] [--backlog-page-bytes SIZE] [--backlog-rounds N]
                        [--selectors | --selectors-only] [--selectors-rounds N]
                        [--amqp | --amqp-only] [--amqp-rounds N]

Measures duomq, ActiveMQ and RabbitMQ one after the other on this machine, over STOMP,
with the same load generator (duomq-bench) and the same matrix, and prints a table.

What it does, in order:
  1. Installs what is missing with apt-get (activemq, rabbitmq-server, python3, and for
     --database postgresql and libpostgresql-jdbc-java); it runs 'apt-get update' first
     only when something has to be installed.
  2. Builds duomq-broker and duomq-bench in release mode with cargo.
  3. Measures the disk's fsync rate (duomq-bench fsync-rate, ${FSYNC_DURATION}) in the same
     temporary directory where the brokers keep their data, right before each target's
     cells (a virtual disk drifts; duomq's window-1 ratio uses the one next to it).
  4. For each target in turn, starts a fresh broker as a child process of this script
     (no service manager), on 127.0.0.1 and free ports only, with its data in a
     temporary directory; runs every cell of the matrix; stops the broker and waits
     for it. The brokers are stopped on errors and on Ctrl-C too.
       duomq             duomq-broker run, fsync before every receipt (the default)
       activemq          the Debian package's ActiveMQ 5.17, the package's JVM options,
                         a STOMP connector only, KahaDB with journal disk syncs on
                         (config: bench/lib/activemq.xml)
       rabbitmq-classic  the Debian package's RabbitMQ 3.10 with the STOMP plugin,
                         durable classic queues (config: bench/lib/rabbitmq.conf)
       rabbitmq-quorum   the same, durable quorum queues (x-queue-type:quorum)
     RabbitMQ clients log in as guest to the default virtual host: duomq-bench sends
     --vhost / as STOMP's CONNECT host header, which RabbitMQ reads as the virtual host.
     RabbitMQ sends a SEND's receipt as a publisher confirm, once a persistent message
     is on disk: the same promise as duomq's receipt and ActiveMQ's. (A classic queue
     may also confirm a message that a consumer acknowledged before it reached the
     disk; it never needs to be written then. duomq fsyncs before any delivery.)
  5. With --failover: for duomq and ActiveMQ (as --only allows), starts a live/backup
     pair and runs 'duomq-bench failover' against it: ${FAILOVER_KILLS} times, after
     ${FAILOVER_EVERY} of load (1 producer with 16 receipts in flight, 1 consumer acking
     each message), SIGKILL the live member, wait for the other to take over, restart
     the killed one and wait until it can take over again (config: bench/lib/failover.sh).
       duomq     two duomq-broker run, ha.policy replication, fileLock arbiter in the
                 pair's temporary directory; ready = backup with sync state synced
       activemq  two ActiveMQ processes on one KahaDB directory (shared-storage
                 master/slave, bench/lib/activemq-shared.xml): the slave blocks on
                 KahaDB's lock and opens no port; ready = process running, plus 5s
     Clients use failover:(a,b)?maxReconnectAttempts=-1 and resend unreceipted SENDs.
  6. With --replication: the cost of synchronous replication (duomq only, see below).
  7. With --network: a flow across a network bridge (issue 13), three cells of the
     duration each, 1 KiB persistent 1P+1C w64 as in the matrix (client-individual acks,
     prefetch ${PREFETCH}), then the failover of the bridge's target (config:
     bench/lib/network.sh):
       duomq local     one broker, producer and consumer on it
       duomq bridged   two standalone brokers A and B, A with a network connector to
                       B's cluster port; producer on A, consumer on B: msg/s counts what
                       the consumer on B received
       activemq        two ActiveMQ brokers, each with its own KahaDB (journal fsyncs on)
                       and STOMP port, the producer's with a one-way networkConnector
                       to the consumer's OpenWire port (bench/lib/activemq-network-*.xml)
     Prints bridged/local (goal >= 0.5) and bridged/ActiveMQ (goal >= 5). A cell whose
     receipted messages did not all reach the consumer fails (NOT DRAINED).
     Failover: the target is a duomq live/backup pair (as in --failover), the source a
     standalone broker with a masterslave:(a,b) connector to the pair's cluster ports;
     the producer sends to the source, the consumer reads from the pair through
     failover:(a,b); ${NETWORK_KILLS} times, after ${FAILOVER_EVERY} of flow, SIGKILL the pair's live
     and restart it. The gap of a kill is the longest pause between two new messages at
     the consumer until the next kill; reports p50 and max (goal p50 < 1 s), lost
     (receipted at the source, never delivered) and duplicates.
  8. With --groups: message groups (issue 14), each cell the duration after the warm-up
     (config: bench/lib/groups.sh):
       throughput  one broker each, 1 KiB persistent, 2 producers + 4 consumers, window
                   64, client-individual acks, prefetch ${PREFETCH}: ungrouped, then grouped
                   (message i of each producer carries JMSXGroupID g<i % 1000>); duomq,
                   and ActiveMQ, whose STOMP connector maps JMSXGroupID to its message
                   groups. RabbitMQ has no message groups and is left out (the report
                   says so). Prints duomq grouped/ungrouped (goal >= 0.8) and duomq
                   grouped/ActiveMQ grouped. Every grouped cell checks that each group
                   reached exactly one consumer, in order per producer; a cell with a
                   violation fails.
       decision    two standalone duomq brokers bridged both ways, L with
                   grouping.handler local, R with remote asking L: 1 producer + 1
                   consumer on R, then on L, window 1, 10 groups alive at a time, each
                   replaced after 5 messages; the receipt latency (p50, p99) of a new
                   group's first message beside the others' (on R the first one waits
                   for L's decision).
  9. With --database: shared-database master/slave on PostgreSQL (issue 15), on one
     PostgreSQL server that the script starts on 127.0.0.1 (initdb and pg_ctl of the
     Debian package, as the postgres user when run as root, data in the temporary
     directory, fsync and synchronous_commit on, no checkpoint during the section) and
     stops at the end (config: bench/lib/database.sh):
       duomq     two duomq-broker run, ha.policy sharedStore, storage.store database on
                 one database; lease 5s, renewed every 1s, the backup polls every 500ms
       activemq  two ActiveMQ brokers, JDBC persistence adapter on another database of
                 the same server (commons-dbcp pool, Debian's PostgreSQL JDBC driver),
                 lease database locker with the same lease renewed as often (ActiveMQ's
                 slave retries once per lease) (bench/lib/activemq-jdbc.xml)
     ${DATABASE_ROUNDS} rounds, each starting each pair afresh (every other round ActiveMQ's
     first): 1 KiB persistent 1P+1C at window 1 and window 64 against the live member
     (client-individual acks, prefetch ${PREFETCH}), the duration after the warm-up each,
     counting the transactions PostgreSQL committed for each. Then per pair,
     ${DATABASE_KILLS} times, after ${FAILOVER_EVERY} of load, SIGKILL the live member (as in --failover),
     wait for the other to take over, restart the killed one. Prints each cell's median
     msg/s over the rounds and duomq/ActiveMQ (goal >= 3), commits per message, and the
     failover gap from the kill to the first receipt from the new live, p50 and max
     (goal: duomq's p50 below ActiveMQ's).
 10. With --tls: what TLS costs (issue 17), ${TLS_ROUNDS} rounds (config: bench/lib/tls.sh). A
     throwaway CA and one loopback certificate from it ('duomq-bench test-certs', duomq's
     own certificate code, ECDSA P-256); duomq-bench trusts the CA (--ca-file).
       duomq plain     a duomq broker, plaintext STOMP
       duomq tls       another one beside it, its STOMP listener on TLS only
                       (tls.stomp.enabled)
       activemq        one ActiveMQ broker with a plaintext STOMP connector and a
                       stomp+ssl one, its keystore the same certificate and key as PKCS12
                       ('openssl pkcs12 -export'; bench/lib/activemq-ssl.xml)
     Cells, as the matrix's of the same name: 1 KiB persistent 1P+1C w64 and 4P+4C w64.
     Every broker starts afresh each round; within a round each cell runs on plaintext
     and on TLS back to back, TLS first every other round. Prints the medians (msg/s,
     latency, CPU per message of the broker and of broker plus load generator), duomq
     TLS/plaintext msg/s per cell as the median of the rounds' ratios (goal >= 0.85: TLS
     costs below 15%), ActiveMQ's own TLS/plaintext, and duomq TLS/ActiveMQ stomp+ssl.
 11. With --backlog: draining a backlog (issue 18), ${BACKLOG_ROUNDS} round(s), every broker fresh for
     each cell (config: bench/lib/backlog.sh). 'duomq-bench run --backlog N': 4 producers
     (64 receipts in flight each) send ${BACKLOG_MESSAGES} persistent messages of ${BACKLOG_SIZE} bytes in all to
     a queue nobody consumes; once all are receipted, 1 consumer subscribes
     (client-individual acks, prefetch ${PREFETCH}) and drains it; the drain rate is deliveries
     over the time from SUBSCRIBE to the last message. On:
       duomq memory  memory.maxQueueBytes/maxBrokerBytes above the backlog (all in memory)
       duomq paged   the same plus addressSettings '>' maxSizeBytes ${BACKLOG_PAGE_BYTES},
                     addressFullPolicy page (the rest waits in the journal)
       activemq      the matrix's ActiveMQ: KahaDB, journal syncs on, default memory limits
     Prints fill and drain rates, the broker's peak RSS, and the ratios duomq paged/in-memory
     drain (goal >= 0.5) and duomq paged/ActiveMQ drain. RabbitMQ is not measured here.
 12. With --selectors: consuming through JMS selectors (issue 18), ${SELECTORS_ROUNDS} rounds (config:
     bench/lib/selectors.sh): 1 KiB persistent, 2 producers w64, 2 consumers, every message
     with a header colour red or blue in turn; plain (no selector) against selector
     (consumer 0 "colour = 'red'", consumer 1 "colour = 'blue'", each delivery checked
     against its selector), the duration after the warm-up each, on duomq and ActiveMQ, one
     broker per system and round. Prints selector/plain per system (median of the rounds'
     ratios) and duomq selector/ActiveMQ selector.
 13. With --amqp: AMQP 1.0 (issue 19), ${AMQP_ROUNDS} rounds (config: bench/lib/amqp.sh), one load client
     for every broker: 'duomq-bench amqp' (fe2o3-amqp's client; each producer keeps up to C
     transfers unsettled, each consumer grants C link credit and settles each delivery
     accepted as it takes it). Cells: 1 KiB, header durable=true, 1P+1C and 4P+4C, each at
     credit C = 1 and 64, the duration after the warm-up each, on fresh queues, every broker
     started afresh each round:
       duomq     the matrix's broker with amqp.enabled; address queue://NAME
       rabbitmq  the Debian package's RabbitMQ 3.10 with the rabbitmq_amqp1_0 plugin, a
                 durable classic queue declared beforehand (over STOMP), guest on loopback;
                 address /amq/queue/NAME (in the section when --only has rabbitmq)
       activemq  Debian's ActiveMQ 5.17 package ships no AMQP transport (no activemq-amqp
                 jar): the report says so for it instead of a figure
     The disk's fsync rate is measured before each round. Prints each cell's median msg/s
     over the rounds, p99 latency and broker CPU per message, and duomq over the best peer
     (goal >= 2).
 14. Prints the table and writes everything to the output directory.

The matrix (each cell on a fresh queue, consumers acking every message with
client-individual, prefetch ${PREFETCH}):
$(for c in "${CELLS[@]}"; do printf '  %s\n' "${c##*|}"; done)
  PxC = producers and consumers, each on its own connection; wN = receipts each
  producer may have outstanding (w1: every send waits for its receipt).

The table: per cell and broker, msg/s (received by the consumers) and p99
send-to-receive latency; then duomq's msg/s over the best of the other brokers and
over ActiveMQ. Below it: broker RSS when idle (just started) and at its peak under
load, the disk's fsync rate and duomq's w1 rate as a multiple of it, and the machine.
'!' marks a cell that lost messages, delivered duplicates or had connection errors;
'fail' one that produced no result (reasons are listed under the table).

Options:
  --quick         3s measured after 1s of warm-up per cell (default ${DURATION} after ${WARMUP})
  --only LIST     comma-separated targets: duomq, activemq, rabbitmq (both RabbitMQ
                  queue types), rabbitmq-classic, rabbitmq-quorum (default: all)
  --out DIR       output directory (default: bench/results/<UTC timestamp>/)
  --duration D    measured time per cell, e.g. 10s, 500ms, 2m
  --warmup D      unmeasured time before it
  --prefetch N    unacknowledged messages a broker may push to each consumer
  --failover      also run the failover section (minutes: about 20 x (3s + failover +
                  restart) per target)
  --failover-only run only the failover section (no fsync rate, no matrix)
  --failover-kills N  kills per target (default ${FAILOVER_KILLS})
  --replication   also measure what synchronous replication costs (duomq only): rounds
                  alternate one broker and a live/backup pair (as in --failover) with
                  ha.backupAck written, then synced, at 1 KiB persistent 1P+1C w64;
                  the report compares medians (about 3 x rounds x (duration + 5s))
  --replication-only  run only that section (no fsync rate, no matrix)
  --replication-rounds N  rounds (default ${REPLICATION_ROUNDS})
  --network       also run the network section (duomq cells when duomq is in --only,
                  the ActiveMQ cell when activemq is; about 3 x (duration + warm-up)
                  plus ${NETWORK_KILLS} x (${FAILOVER_EVERY} + failover + restart))
  --network-only  run only that section (no fsync rate, no matrix)
  --network-kills N  kills of the target's live (default ${NETWORK_KILLS})
  --groups        also run the message groups section (duomq and ActiveMQ as --only
                  allows; about (4 x rounds + 2) x (duration + warm-up) plus broker
                  start-ups)
  --groups-only   run only that section (no fsync rate, no matrix)
  --groups-rounds N  run the ungrouped/grouped pair N times, every other round grouped
                  first; the report takes each kind's mean (default ${GROUPS_ROUNDS})
  --database      also run the shared-database section (duomq and ActiveMQ as --only
                  allows; about rounds x 2 x 2 x (duration + warm-up + 2s) plus kills x
                  (${FAILOVER_EVERY} + failover + restart) per system: 6 to 7 minutes by default)
  --database-only run only that section (no fsync rate, no matrix)
  --database-kills N  kills of the live member per system (default ${DATABASE_KILLS})
  --database-rounds N  rounds of throughput cells (default ${DATABASE_ROUNDS})
  --tls           also run the TLS section (duomq, and ActiveMQ as --only allows; about
                  rounds x 8 x (duration + warm-up + 1s) plus broker start-ups)
  --tls-only      run only that section (no fsync rate, no matrix)
  --tls-rounds N  rounds of the TLS section (default ${TLS_ROUNDS})
  --backlog       also run the backlog section (duomq and ActiveMQ as --only allows; at the
                  default size minutes per cell: fill plus drain, 3 cells per round)
  --backlog-only  run only that section (no fsync rate, no matrix)
  --backlog-messages N  messages in the backlog (default ${BACKLOG_MESSAGES})
  --backlog-size BYTES  body size of each (default ${BACKLOG_SIZE})
  --backlog-page-bytes SIZE  duomq paged's maxSizeBytes (default ${BACKLOG_PAGE_BYTES}, at least 64KiB)
  --backlog-rounds N  rounds of the backlog section (default ${BACKLOG_ROUNDS})
  --selectors     also run the selectors section (duomq and ActiveMQ as --only allows;
                  about rounds x 4 x (duration + warm-up + 1s) plus broker start-ups)
  --selectors-only  run only that section (no fsync rate, no matrix)
  --selectors-rounds N  rounds of the selectors section (default ${SELECTORS_ROUNDS})
  --amqp          also run the AMQP 1.0 section (duomq and RabbitMQ as --only allows; about
                  rounds x 8 x (duration + warm-up + 2s) plus broker start-ups)
  --amqp-only     run only that section (no fsync rate, no matrix)
  --amqp-rounds N  rounds of the AMQP section (default ${AMQP_ROUNDS})
  -h, --help      this text

Environment: BENCH_DURATION, BENCH_WARMUP, BENCH_PREFETCH, BENCH_ONLY, BENCH_OUT,
BENCH_NETWORK_KILLS, BENCH_GROUPS_ROUNDS, BENCH_DATABASE_KILLS, BENCH_DATABASE_ROUNDS,
BENCH_TLS_ROUNDS, BENCH_BACKLOG_MESSAGES, BENCH_BACKLOG_SIZE, BENCH_BACKLOG_PAGE_BYTES,
BENCH_BACKLOG_ROUNDS, BENCH_SELECTORS_ROUNDS and BENCH_AMQP_ROUNDS set the same as the
options (options win);
TMPDIR chooses where the brokers' data lives (default /tmp): keep it on the disk you
mean to measure, not on a tmpfs. DUOMQ_BROKER and DUOMQ_BENCH, both set, name binaries to use instead of building
release ones (the bench's tests pass their debug builds).

Output directory:
  summary.md     the tables as Markdown, plus every number of every cell
  table.txt      the table as printed
  results.jsonl  one 'duomq-bench run --json' line per cell, labelled TARGET/CELL
  fsync.json     'duomq-bench fsync-rate --json', measured just before duomq's cells
  fsync-T.json   the same, measured just before target T's cells
  fsync-duomq-after-w1.json  the same, right after duomq's window-1 cell (the ratio uses
                 the mean of this one and fsync.json)
  failover.jsonl one 'duomq-bench failover --json' line per target (with --failover)
  replication.jsonl  one 'duomq-bench run --json' line per round and setup (with --replication)
  network.jsonl  one 'duomq-bench run --json' line per network cell (with --network)
  network-failover.jsonl  one 'duomq-bench failover --json' line (with --network)
  network.txt    the network section's table (python3 bench/lib/network-report.py DIR)
  network-load.tsv  the machine's 1-minute load before each network cell
  groups.jsonl   one 'duomq-bench run --json' line per message groups cell (with --groups)
  groups.txt     that section's tables (python3 bench/lib/groups-report.py DIR)
  groups-load.tsv  the machine's 1-minute load before each message groups cell
  database.jsonl one 'duomq-bench run --json' line per database cell (with --database)
  database-commits.tsv  PostgreSQL transactions committed during each database cell
  database-failover.jsonl  one 'duomq-bench failover --json' line per system (with --database)
  database.txt   that section's tables (python3 bench/lib/database-report.py DIR)
  tls.jsonl      one 'duomq-bench run --json' line per TLS cell (with --tls), labelled
                 tls/SETUP/CELL/rROUND
  tls.txt        that section's table and ratios (python3 bench/lib/tls-report.py DIR)
  tls-load.tsv   the machine's 1-minute load before each TLS cell
  backlog.jsonl  one 'duomq-bench run --backlog --json' line per backlog cell (with
                 --backlog), labelled backlog/SETUP/rROUND
  backlog.txt    that section's table and ratios (python3 bench/lib/backlog-report.py DIR)
  selectors.jsonl  one 'duomq-bench run --json' line per selectors cell (with --selectors),
                 labelled selectors/SYSTEM-KIND/rROUND
  selectors.txt  that section's table and ratios (python3 bench/lib/selectors-report.py DIR)
  amqp.jsonl     one 'duomq-bench amqp --json' line per AMQP cell (with --amqp), labelled
                 amqp/SYSTEM/CELL/rROUND
  amqp.txt       that section's table and ratios (python3 bench/lib/amqp-report.py DIR)
  fsync-amqp-rN.json  'duomq-bench fsync-rate --json' before AMQP round N
  backlog-load.tsv, selectors-load.tsv, amqp-load.tsv  the machine's 1-minute load before
                 each cell
  run.tsv, cells.tsv, failures.tsv   what the report is made from
  logs/          each broker's log and each cell's duomq-bench stderr (and PostgreSQL's)
python3 bench/lib/report.py DIR prints the table of a finished run again.

Needs: root (for apt-get) or the packages already installed, cargo, about 2 GiB of
free memory. Takes 20 x (duration + warm-up + about 1s) plus the build and broker
start-ups: about 6 minutes by default, 2 with --quick. Exits 1 if any cell failed.
EOF
}

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# --- options ----------------------------------------------------------------------

while (($#)); do
    case $1 in
    --quick) DURATION=3s WARMUP=1s ;;
    --only) ONLY=${2:?--only needs a list}; shift ;;
    --only=*) ONLY=${1#*=} ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    --out=*) OUT=${1#*=} ;;
    --duration) DURATION=${2:?--duration needs a value}; shift ;;
    --duration=*) DURATION=${1#*=} ;;
    --warmup) WARMUP=${2:?--warmup needs a value}; shift ;;
    --warmup=*) WARMUP=${1#*=} ;;
    --prefetch) PREFETCH=${2:?--prefetch needs a value}; shift ;;
    --prefetch=*) PREFETCH=${1#*=} ;;
    --failover) FAILOVER=yes ;;
    --failover-only) FAILOVER=yes MATRIX=no ;;
    --failover-kills) FAILOVER_KILLS=${2:?--failover-kills needs a number}; shift ;;
    --failover-kills=*) FAILOVER_KILLS=${1#*=} ;;
    --replication) REPLICATION=yes ;;
    --replication-only) REPLICATION=yes MATRIX=no ;;
    --replication-rounds) REPLICATION_ROUNDS=${2:?--replication-rounds needs a number}; shift ;;
    --replication-rounds=*) REPLICATION_ROUNDS=${1#*=} ;;
    --network) NETWORK=yes ;;
    --network-only) NETWORK=yes MATRIX=no ;;
    --network-kills) NETWORK_KILLS=${2:?--network-kills needs a number}; shift ;;
    --network-kills=*) NETWORK_KILLS=${1#*=} ;;
    --groups) GROUPS_SECTION=yes ;;
    --groups-only) GROUPS_SECTION=yes MATRIX=no ;;
    --groups-rounds) GROUPS_ROUNDS=${2:?--groups-rounds needs a number}; shift ;;
    --groups-rounds=*) GROUPS_ROUNDS=${1#*=} ;;
    --database) DATABASE=yes ;;
    --database-only) DATABASE=yes MATRIX=no ;;
    --database-kills) DATABASE_KILLS=${2:?--database-kills needs a number}; shift ;;
    --database-kills=*) DATABASE_KILLS=${1#*=} ;;
    --database-rounds) DATABASE_ROUNDS=${2:?--database-rounds needs a number}; shift ;;
    --database-rounds=*) DATABASE_ROUNDS=${1#*=} ;;
    --tls) TLS_SECTION=yes ;;
    --tls-only) TLS_SECTION=yes MATRIX=no ;;
    --tls-rounds) TLS_ROUNDS=${2:?--tls-rounds needs a number}; shift ;;
    --tls-rounds=*) TLS_ROUNDS=${1#*=} ;;
    --backlog) BACKLOG_SECTION=yes ;;
    --backlog-only) BACKLOG_SECTION=yes MATRIX=no ;;
    --backlog-messages) BACKLOG_MESSAGES=${2:?--backlog-messages needs a number}; shift ;;
    --backlog-messages=*) BACKLOG_MESSAGES=${1#*=} ;;
    --backlog-size) BACKLOG_SIZE=${2:?--backlog-size needs a number of bytes}; shift ;;
    --backlog-size=*) BACKLOG_SIZE=${1#*=} ;;
    --backlog-page-bytes) BACKLOG_PAGE_BYTES=${2:?--backlog-page-bytes needs a size}; shift ;;
    --backlog-page-bytes=*) BACKLOG_PAGE_BYTES=${1#*=} ;;
    --backlog-rounds) BACKLOG_ROUNDS=${2:?--backlog-rounds needs a number}; shift ;;
    --backlog-rounds=*) BACKLOG_ROUNDS=${1#*=} ;;
    --selectors) SELECTORS_SECTION=yes ;;
    --selectors-only) SELECTORS_SECTION=yes MATRIX=no ;;
    --selectors-rounds) SELECTORS_ROUNDS=${2:?--selectors-rounds needs a number}; shift ;;
    --selectors-rounds=*) SELECTORS_ROUNDS=${1#*=} ;;
    --amqp) AMQP_SECTION=yes ;;
    --amqp-only) AMQP_SECTION=yes MATRIX=no ;;
    --amqp-rounds) AMQP_ROUNDS=${2:?--amqp-rounds needs a number}; shift ;;
    --amqp-rounds=*) AMQP_ROUNDS=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

# seconds D: a duration like 10s, 500ms or 2m in whole seconds (rounded up).
seconds() {
    case $1 in
    *ms) [[ ${1%ms} =~ ^[0-9]+$ ]] && echo $(((${1%ms} + 999) / 1000)) ;;
    *s) [[ ${1%s} =~ ^[0-9]+$ ]] && echo "${1%s}" ;;
    *m) [[ ${1%m} =~ ^[0-9]+$ ]] && echo $((${1%m} * 60)) ;;
    *) return 1 ;;
    esac
}
seconds "$DURATION" >/dev/null || die "--duration: \"$DURATION\" is not a duration like 10s, 500ms or 2m"
seconds "$WARMUP" >/dev/null || die "--warmup: \"$WARMUP\" is not a duration like 3s, 500ms or 1m"
[[ $PREFETCH =~ ^[1-9][0-9]*$ ]] || die "--prefetch: \"$PREFETCH\" is not a positive number"
[[ $FAILOVER_KILLS =~ ^[1-9][0-9]*$ ]] || die "--failover-kills: \"$FAILOVER_KILLS\" is not a positive number"
[[ $REPLICATION_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--replication-rounds: \"$REPLICATION_ROUNDS\" is not a positive number"
[[ $NETWORK_KILLS =~ ^[1-9][0-9]*$ ]] || die "--network-kills: \"$NETWORK_KILLS\" is not a positive number"
[[ $GROUPS_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--groups-rounds: \"$GROUPS_ROUNDS\" is not a positive number"
[[ $DATABASE_KILLS =~ ^[1-9][0-9]*$ ]] || die "--database-kills: \"$DATABASE_KILLS\" is not a positive number"
[[ $DATABASE_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--database-rounds: \"$DATABASE_ROUNDS\" is not a positive number"
[[ $TLS_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--tls-rounds: \"$TLS_ROUNDS\" is not a positive number"
[[ $BACKLOG_MESSAGES =~ ^[1-9][0-9]*$ ]] || die "--backlog-messages: \"$BACKLOG_MESSAGES\" is not a positive number"
[[ $BACKLOG_SIZE =~ ^[1-9][0-9]*$ ]] || die "--backlog-size: \"$BACKLOG_SIZE\" is not a positive number of bytes"
[[ $BACKLOG_PAGE_BYTES =~ ^[1-9][0-9]*(B|KiB|MiB|GiB)?$ ]] ||
    die "--backlog-page-bytes: \"$BACKLOG_PAGE_BYTES\" is not a size like 1MiB or 262144"
[[ $BACKLOG_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--backlog-rounds: \"$BACKLOG_ROUNDS\" is not a positive number"
[[ $SELECTORS_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--selectors-rounds: \"$SELECTORS_ROUNDS\" is not a positive number"
[[ $AMQP_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--amqp-rounds: \"$AMQP_ROUNDS\" is not a positive number"
# How long a backlog's fill, and its drain, may take: two minutes plus 4 ms a message
# (250 msg/s, slower than any broker measured here).
BACKLOG_TIMEOUT=$((120 + BACKLOG_MESSAGES / 250))
# duomq-bench's drain timeout (10s) plus a minute for connecting and reporting.
CELL_TIMEOUT=$(($(seconds "$DURATION") + $(seconds "$WARMUP") + 70))

# The targets, always in this order (duomq's column first), each once.
ALL_TARGETS=(duomq activemq rabbitmq-classic rabbitmq-quorum)
IFS=',' read -r -a wanted <<<"$ONLY"
for t in "${wanted[@]}"; do
    case $t in
    duomq | activemq | rabbitmq | rabbitmq-classic | rabbitmq-quorum | '') ;;
    *) die "--only: unknown target \"$t\" (duomq, activemq, rabbitmq, rabbitmq-classic, rabbitmq-quorum)" ;;
    esac
done
TARGETS=()
for t in "${ALL_TARGETS[@]}"; do
    if [[ ",$ONLY," == *",$t,"* || ($t == rabbitmq-* && ",$ONLY," == *",rabbitmq,"*) ]]; then
        TARGETS+=("$t")
    fi
done
((${#TARGETS[@]})) || die "--only: no target given"

# --- packages and build -------------------------------------------------------------

install_missing() {
    local pkgs=() missing=() p
    command -v python3 >/dev/null || pkgs+=(python3)
    if [[ $TLS_SECTION == yes ]] && ! command -v openssl >/dev/null; then pkgs+=(openssl); fi
    if [[ $DATABASE == yes ]]; then
        pkgs+=(postgresql)
        if [[ " ${TARGETS[*]} " == *" activemq "* ]]; then pkgs+=(libpostgresql-jdbc-java); fi
    fi
    for t in "${TARGETS[@]}"; do
        case $t in
        activemq) pkgs+=(activemq) ;;
        # Only the matrix and the AMQP section measure RabbitMQ.
        rabbitmq-*) if [[ $MATRIX == yes || $AMQP_SECTION == yes ]]; then pkgs+=(rabbitmq-server); fi ;;
        esac
    done
    for p in "${pkgs[@]}"; do
        if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]] &&
            [[ " ${missing[*]} " != *" $p "* ]]; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
}

build() {
    if [[ -n ${DUOMQ_BROKER:-} && -n ${DUOMQ_BENCH:-} ]]; then
        log "using $DUOMQ_BROKER and $DUOMQ_BENCH (DUOMQ_BROKER, DUOMQ_BENCH), not building"
        BENCH=$DUOMQ_BENCH
        return
    fi
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain first"
    log "building duomq-broker and duomq-bench (release)"
    (cd "$ROOT" && cargo build --release -p duomq-broker -p duomq-bench) ||
        die "cargo build failed"
    local target_dir
    target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    DUOMQ_BROKER=$target_dir/release/duomq-broker
    BENCH=$target_dir/release/duomq-bench
}

install_missing
build

# --- the run's directories, and stopping what we started ------------------------------

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$BENCH_DIR/results/$STAMP}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
LOG_DIR=$OUT/logs
: >"$OUT/results.jsonl"
: >"$OUT/failures.tsv"
: >"$OUT/failover.jsonl"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/duomq-compare.XXXXXX")

# shellcheck source=lib/brokers.sh
. "$LIB_DIR/brokers.sh"
# shellcheck source=lib/failover.sh
. "$LIB_DIR/failover.sh"
# shellcheck source=lib/replication.sh
. "$LIB_DIR/replication.sh"
# shellcheck source=lib/network.sh
. "$LIB_DIR/network.sh"
# shellcheck source=lib/groups.sh
. "$LIB_DIR/groups.sh"
# shellcheck source=lib/database.sh
. "$LIB_DIR/database.sh"
# shellcheck source=lib/tls.sh
. "$LIB_DIR/tls.sh"
# shellcheck source=lib/backlog.sh
. "$LIB_DIR/backlog.sh"
# shellcheck source=lib/selectors.sh
. "$LIB_DIR/selectors.sh"
# shellcheck source=lib/amqp.sh
. "$LIB_DIR/amqp.sh"

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    # A second Ctrl-C must not cut the broker's stop short.
    trap '' INT TERM
    stop_broker
    stop_postgres
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted: stopping the broker"; exit 130' INT TERM

# --- the machine ----------------------------------------------------------------------

meta() { printf '%s\t%s\n' "$1" "$2" >>"$OUT/run.tsv"; }
: >"$OUT/run.tsv"
meta started "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta targets "$(
    IFS=,
    echo "${TARGETS[*]}"
)"
meta duration "$DURATION"
meta warmup "$WARMUP"
meta prefetch "$PREFETCH"
[[ $GROUPS_SECTION == yes ]] && meta groups_rounds "$GROUPS_ROUNDS"
[[ $TLS_SECTION == yes ]] && meta tls_rounds "$TLS_ROUNDS"
meta nproc "$(nproc)"
meta memory "$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
meta kernel "$(uname -r)"
meta cpu_model "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
meta workdir_fs "$(df --output=fstype "$WORK" | tail -1) ($(df --output=source "$WORK" | tail -1))"
meta version.duomq "duomq $("$DUOMQ_BROKER" --version | awk '{ print $NF }')"
if [[ " ${TARGETS[*]} " == *" activemq "* ]]; then
    meta version.activemq "ActiveMQ $(dpkg-query -W -f='${Version}' activemq)"
fi
if [[ $MATRIX == yes && " ${TARGETS[*]} " == *" rabbitmq-"* ]]; then
    meta version.rabbitmq "RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server) on Erlang $(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo '?')"
fi
for c in "${CELLS[@]}"; do
    IFS='|' read -r id _ _ _ _ _ title <<<"$c"
    printf '%s\t%s\n' "$id" "$title"
done >"$OUT/cells.tsv"

if [[ $(df --output=fstype "$WORK" | tail -1) == tmpfs ]]; then
    log "warning: $WORK is on tmpfs, where fsync costs nothing; set TMPDIR to a directory on a disk"
fi

# measure_fsync TARGET: the disk's fsync rate right before TARGET's cells, into
# fsync-TARGET.json. A virtual disk's fsync latency drifts from minute to minute, so the
# window-1 ratio uses the measurements taken just before duomq's window-1 cell (fsync.json)
# and just after it (fsync-duomq-after-w1.json).
measure_fsync() {
    log "measuring the disk's fsync rate ($FSYNC_DURATION): $1"
    mkdir -p "$WORK/fsync"
    if ! "$BENCH" fsync-rate --dir "$WORK/fsync" --duration "$FSYNC_DURATION" --json \
        >"$OUT/fsync-$1.json" 2>>"$LOG_DIR/fsync-rate.log"; then
        log "fsync-rate failed (see $LOG_DIR/fsync-rate.log)"
        return
    fi
    if [[ $1 == duomq || ! -s $OUT/fsync.json ]]; then
        cp "$OUT/fsync-$1.json" "$OUT/fsync.json"
    fi
}

# --- the matrix -----------------------------------------------------------------------

FAILED=0

fail_cell() {
    printf '%s\t%s\n' "$1" "$2" >>"$OUT/failures.tsv"
    FAILED=1
    log "$1: $2"
}

# run_cell TARGET CELL: one duomq-bench run against the broker that is up.
run_cell() {
    local target=$1 id producers consumers size persistent window title
    IFS='|' read -r id producers consumers size persistent window title <<<"$2"
    local label="$target/$id" dest="/queue/bench-$id-$STAMP"
    local args=(run --url "$BROKER_URL" --destination "$dest"
        --producers "$producers" --consumers "$consumers" --size "$size" --window "$window"
        --duration "$DURATION" --warmup "$WARMUP" --prefetch "$PREFETCH" --ack client-individual
        --broker-pid "$BROKER_PID" --label "$label" --json)
    [[ $persistent == yes ]] && args+=(--persistent)
    [[ -n $BROKER_LOGIN ]] && args+=(--login "$BROKER_LOGIN" --passcode "$BROKER_PASSCODE")

    # Every target gets a SUBSCRIBE header of its own, so that duomq-bench's consumers
    # take the same code path (its raw STOMP consumer) against every broker.
    local queue_headers=() h
    case $target in
    duomq | activemq) args+=(--subscribe-header "activemq.prefetchSize=$PREFETCH") ;;
    rabbitmq-classic) queue_headers=(durable=true auto-delete=false) ;;
    rabbitmq-quorum) queue_headers=(x-queue-type=quorum durable=true auto-delete=false) ;;
    esac
    if [[ $target == rabbitmq-* ]]; then
        args+=(--vhost "$RABBITMQ_VHOST" --subscribe-header "prefetch-count=$PREFETCH")
        # The same queue arguments on SEND and SUBSCRIBE: RabbitMQ refuses a declare
        # whose arguments differ from the existing queue's.
        for h in "${queue_headers[@]}"; do
            args+=(--send-header "$h" --subscribe-header "$h")
        done
        local declare=(declare --url "stomp://$BROKER_LOGIN:$BROKER_PASSCODE@${BROKER_URL#stomp://}"
            --vhost "$RABBITMQ_VHOST" --destination "$dest")
        for h in "${queue_headers[@]}"; do declare+=(--header "$h"); done
        if ! probe "${declare[@]}" 2>>"$LOG_DIR/$target-$id.log"; then
            fail_cell "$label" "could not declare $dest (see logs/$target-$id.log)"
            return
        fi
    fi

    log "$label: ${title} (${DURATION} after ${WARMUP} warm-up)"
    bench_json "$label" "$OUT/results.jsonl" "$target-$id.log" "$CELL_TIMEOUT" "${args[@]}"
}

start_target() {
    case $1 in
    duomq) start_duomq ;;
    activemq) start_activemq ;;
    rabbitmq-classic | rabbitmq-quorum) start_rabbitmq "$1" ;;
    esac
}

[[ $MATRIX == yes ]] && for target in "${TARGETS[@]}"; do
    log "$target: starting"
    if ! start_target "$target"; then
        for c in "${CELLS[@]}"; do
            fail_cell "$target/${c%%|*}" "the broker did not start (see logs/$target.log)"
        done
        continue
    fi
    meta "rss_idle.$target" "$(rss_mib "$BROKER_PID")"
    log "$target: up at $BROKER_URL (pid $BROKER_PID, RSS $(rss_mib "$BROKER_PID") MiB)"
    measure_fsync "$target"
    for c in "${CELLS[@]}"; do
        run_cell "$target" "$c"
        # duomq's window-1 cell is compared with the disk: measure right after it too, and
        # the report takes the mean of the two, so a drift during the cell weighs on both.
        if [[ $target == duomq && $c == "${CELLS[0]}" ]]; then
            measure_fsync duomq-after-w1
        fi
    done
    log "$target: stopping"
    stop_broker
done

# --- failover -------------------------------------------------------------------------

if [[ $FAILOVER == yes ]]; then
    for target in duomq activemq; do
        [[ " ${TARGETS[*]} " == *" $target "* ]] && run_failover "$target"
    done
fi

# --- replication cost -----------------------------------------------------------------

if [[ $REPLICATION == yes && " ${TARGETS[*]} " == *" duomq "* ]]; then
    run_replication_cost
fi

# --- network of brokers ---------------------------------------------------------------

if [[ $NETWORK == yes ]]; then
    run_network
fi

# --- message groups -------------------------------------------------------------------

if [[ $GROUPS_SECTION == yes ]]; then
    run_groups
fi

# --- shared database ------------------------------------------------------------------

if [[ $DATABASE == yes ]]; then
    run_database
fi

# --- TLS ------------------------------------------------------------------------------

if [[ $TLS_SECTION == yes ]]; then
    run_tls
fi

# --- backlog and selectors --------------------------------------------------------------

if [[ $BACKLOG_SECTION == yes ]]; then
    run_backlog
fi
if [[ $SELECTORS_SECTION == yes ]]; then
    run_selectors
fi

# --- AMQP 1.0 ---------------------------------------------------------------------------

if [[ $AMQP_SECTION == yes ]]; then
    run_amqp
fi

# --- the report -----------------------------------------------------------------------

echo
if [[ $MATRIX == yes ]]; then
    python3 "$LIB_DIR/report.py" "$OUT" | tee "$OUT/table.txt"
    echo
fi
if [[ $FAILOVER == yes ]]; then
    python3 "$LIB_DIR/failover-report.py" "$OUT/failover.jsonl" | tee "$OUT/failover.txt"
    echo
fi
if [[ $REPLICATION == yes && -s $OUT/replication.jsonl ]]; then
    python3 "$LIB_DIR/replication-report.py" "$OUT/replication.jsonl" | tee "$OUT/replication.txt"
    echo
fi
if [[ $NETWORK == yes ]]; then
    python3 "$LIB_DIR/network-report.py" "$OUT" | tee "$OUT/network.txt"
    echo
fi
if [[ $GROUPS_SECTION == yes ]]; then
    python3 "$LIB_DIR/groups-report.py" "$OUT" | tee "$OUT/groups.txt"
    echo
fi
if [[ $DATABASE == yes ]]; then
    python3 "$LIB_DIR/database-report.py" "$OUT" | tee "$OUT/database.txt"
    echo
fi
if [[ $TLS_SECTION == yes ]]; then
    python3 "$LIB_DIR/tls-report.py" "$OUT" | tee "$OUT/tls.txt"
    echo
fi
if [[ $BACKLOG_SECTION == yes ]]; then
    python3 "$LIB_DIR/backlog-report.py" "$OUT" | tee "$OUT/backlog.txt"
    echo
fi
if [[ $SELECTORS_SECTION == yes ]]; then
    python3 "$LIB_DIR/selectors-report.py" "$OUT" | tee "$OUT/selectors.txt"
    echo
fi
if [[ $AMQP_SECTION == yes ]]; then
    python3 "$LIB_DIR/amqp-report.py" "$OUT" | tee "$OUT/amqp.txt"
    echo
fi
log "results in $OUT"
exit "$FAILED"
