# shellcheck shell=bash disable=SC2034 # RUNNING_STOP is read by brokers.sh (stop_broker)
# The shared-database section of bench/compare.sh (issue 15): a duomq pair sharing one
# PostgreSQL database (ha.policy sharedStore, storage.store database) beside ActiveMQ's
# JDBC master/slave pair on the same PostgreSQL server (lease database locker), both
# measured for throughput on their live member and for the failover gap after a SIGKILL
# of it under load.
#
# PostgreSQL: one server for the whole section, started here from the Debian package's
# binaries (initdb, pg_ctl), on 127.0.0.1 and a free port only, no Unix socket, its data
# in $WORK/postgres, fsync and synchronous_commit on (every commit waits for its WAL
# flush), checkpoints kept out of the section (max_wal_size 8GB, checkpoint_timeout 1h).
# As root it runs as the `postgres` system user (runuser); otherwise as the user running
# compare.sh. A password role `bench` owns two databases, `duomq` and `activemq`,
# one per system. It is stopped at the end of the section (and by compare.sh's cleanup on
# errors and Ctrl-C); its log ends up in logs/postgres.log.
#
# The pairs (a start.sh per member under FAILOVER_DIR, stopped together by stop_pair):
#   duomq     two duomq-broker run, ha.policy sharedStore, storage.store database on the
#             `duomq` database, lease DATABASE_LEASE_MS long, renewed every
#             DATABASE_RENEW_MS, polled by the backup every DATABASE_POLL_MS; a starts
#             first and takes the lease; ready = b reports role backup with the database
#             reachable
#   activemq  two ActiveMQ processes (bench/lib/activemq-jdbc.xml), JDBC persistence
#             adapter on the `activemq` database through the commons-dbcp pool, the lease
#             database locker with the same lease (lockAcquireSleepInterval) renewed as
#             often (lockKeepAlivePeriod); a starts first and is master, b waits for the
#             lease and opens no port
# First DATABASE_ROUNDS rounds of throughput cells, each round starting each pair afresh
# (every other round ActiveMQ's first, so that a disk whose fsync latency drifts weighs
# on both alike):
#   database/TARGET-w1, database/TARGET-w64   1 KiB persistent, 1 producer + 1 consumer,
#       window 1 and 64, client-individual acks, for --duration after --warmup, against
#       the live member's STOMP port (database.jsonl, one 'duomq-bench run --json' line
#       each; rounds after the first are labelled ...-r2, -r3); the transactions the
#       system's database committed meanwhile, from PostgreSQL's statistics, go to
#       database-commits.tsv
# Before each round, PostgreSQL alone (commit_probe, database-probe.tsv): one connection
# committing one 1 KiB INSERT per transaction, the ceiling of anything that commits once
# per message at window 1.
# Then per pair:
#   database-failover/TARGET   'duomq-bench failover' against the pair: DATABASE_KILLS
#       times, after FAILOVER_EVERY of load, SIGKILL the live member, wait for the other
#       to take over, restart the killed one and wait until it can take over again
#       (database-failover.jsonl); each kill reports the time from the SIGKILL to the
#       first receipt from the new live (kill_to_resume_ms)
# Before the pairs, the disk's fsync rate in the same directory (fsync-database.json).
# bench/lib/database-report.py prints the tables (database.txt).
#
# Sourced by compare.sh after failover.sh; uses its write_start_script,
# write_activemq_instance, member_pid, stop_pair, await_status, free_ports, probe,
# fail_cell, meta, measure_fsync and WORK, LOG_DIR, LIB_DIR, DUOMQ_BROKER, BENCH, OUT, STAMP, DURATION,
# WARMUP, PREFETCH, CELL_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT, FAILOVER_EVERY,
# DATABASE_KILLS and TARGETS.

# The lease, the same for both systems: how long a live that stopped renewing still
# counts as alive. duomq renews every DATABASE_RENEW_MS and its backup looks every
# DATABASE_POLL_MS; ActiveMQ renews as often, and its slave retries once per lease (the
# lease database locker's lockAcquireSleepInterval is both).
DATABASE_LEASE_MS=5000
DATABASE_RENEW_MS=1000
DATABASE_POLL_MS=500
# The database cells' windows: every SEND waits for its receipt, then 64 in flight.
DATABASE_WINDOWS=(1 64)
DATABASE_USER=bench
DATABASE_PROBE_SECONDS=5

PG_DIR='' PG_BIN='' PG_PORT='' PG_PASSWORD='' PG_RUNNING=no

# pg_bin_dir: the directory of the newest installed PostgreSQL's initdb and pg_ctl
# (Debian keeps them off PATH, under /usr/lib/postgresql/VERSION/bin); PG_BINDIR wins.
pg_bin_dir() {
    if [[ -n ${PG_BINDIR:-} ]]; then
        echo "$PG_BINDIR"
        return
    fi
    local d
    while read -r d; do
        [[ -x $d/initdb && -x $d/pg_ctl ]] && { echo "$d"; return; }
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
    d=$(command -v pg_ctl) || return 1
    dirname "$d"
}

# as_postgres CMD...: CMD as the user PostgreSQL runs as (root may not run it).
as_postgres() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# psql_ DATABASE ARGS...: psql as the bench role over TCP.
psql_() {
    local db=$1
    shift
    PGPASSWORD=$PG_PASSWORD psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$DATABASE_USER" -d "$db" "$@"
}

# start_postgres: initdb a fresh cluster in $WORK/postgres and start it on a free
# loopback port; creates the databases duomq and activemq.
start_postgres() {
    PG_BIN=$(pg_bin_dir) || { log "no PostgreSQL found (initdb, pg_ctl): install postgresql"; return 1; }
    PG_DIR="$WORK/postgres"
    mkdir -p "$PG_DIR"
    if ((EUID == 0)); then
        # The postgres user must reach its directory through the run's (mode 700) one.
        chmod 711 "$WORK"
        chown postgres: "$PG_DIR"
        if ! runuser -u postgres -- test -w "$PG_DIR"; then
            log "the postgres user cannot write $PG_DIR: every directory above it needs o+x (set TMPDIR elsewhere)"
            return 1
        fi
    fi
    PG_PASSWORD="bench-$RANDOM$RANDOM$RANDOM"
    printf '%s\n' "$PG_PASSWORD" | as_postgres tee "$PG_DIR/pwfile" >/dev/null
    chmod 600 "$PG_DIR/pwfile"
    if ! as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U "$DATABASE_USER" --pwfile="$PG_DIR/pwfile" \
        --auth=scram-sha-256 -E UTF8 --no-locale >"$LOG_DIR/postgres-initdb.log" 2>&1; then
        log "initdb failed (see $LOG_DIR/postgres-initdb.log)"
        return 1
    fi
    as_postgres rm -f "$PG_DIR/pwfile"
    PG_PORT=$(free_ports 1)
    # Durability as a production server keeps it, stated rather than assumed: fsync,
    # synchronous commits and full pages on. No Unix socket: loopback TCP only. No
    # checkpoint during the section (the cells write about a gigabyte of WAL, which would
    # start one under the default max_wal_size): a checkpoint's writes and the full-page
    # images after it slowed whichever cell they fell on by up to five times.
    local opts="-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories='' -c fsync=on"
    opts+=" -c synchronous_commit=on -c full_page_writes=on -c max_connections=200"
    opts+=" -c max_wal_size=8GB -c checkpoint_timeout=1h"
    PG_RUNNING=yes
    # Its own session, so that Ctrl-C reaches compare.sh, which then stops it in order.
    if ! as_postgres setsid -w "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -o "$opts" \
        -w -t "$START_TIMEOUT" start >>"$LOG_DIR/postgres-initdb.log" 2>&1; then
        log "PostgreSQL did not start (see $LOG_DIR/postgres.log)"
        stop_postgres
        return 1
    fi
    if ! psql_ postgres -c 'CREATE DATABASE duomq' -c 'CREATE DATABASE activemq' >>"$LOG_DIR/postgres-initdb.log" 2>&1; then
        log "could not create the databases (see $LOG_DIR/postgres-initdb.log)"
        stop_postgres
        return 1
    fi
    meta database.postgres "$(psql_ postgres -At -c 'SHOW server_version' 2>/dev/null | awk '{ print "PostgreSQL " $1 }')"
    meta database.settings "$(psql_ postgres -At -F ' ' -c "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', 'full_page_writes', 'shared_buffers', 'max_wal_size', 'checkpoint_timeout')" 2>/dev/null)"
    log "database: PostgreSQL up on 127.0.0.1:$PG_PORT (data in $PG_DIR/data)"
}

# stop_postgres: a fast shutdown (clients cut, checkpoint, exit) when it runs; its log
# into logs/. Also called by compare.sh's cleanup.
stop_postgres() {
    [[ $PG_RUNNING == yes ]] || return 0
    PG_RUNNING=no
    if [[ -s $PG_DIR/data/postmaster.pid ]]; then
        local pid
        pid=$(head -n 1 "$PG_DIR/data/postmaster.pid")
        if ! as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t "$STOP_TIMEOUT" stop \
            >>"$LOG_DIR/postgres-initdb.log" 2>&1; then
            log "pg_ctl stop failed; sending SIGQUIT to the postmaster ($pid)"
            kill -QUIT "$pid" 2>/dev/null || true
        fi
    fi
    cp "$PG_DIR/postgres.log" "$LOG_DIR/postgres.log" 2>/dev/null || true
}

# start_duomq_database_pair: members a and b on the `duomq` database; a takes the lease,
# b waits as backup.
start_duomq_database_pair() {
    FAILOVER_DIR="$WORK/database-duomq"
    mkdir -p "$FAILOVER_DIR"
    local m role ports
    # The URL holds the password: a file, not the config or the command line.
    (umask 077 && printf 'postgresql://%s:%s@127.0.0.1:%s/duomq?sslmode=disable\n' \
        "$DATABASE_USER" "$PG_PASSWORD" "$PG_PORT" >"$FAILOVER_DIR/database-url")
    read -r -a ports <<<"$(free_ports 4)"
    declare -gA DUOMQ_STOMP=([a]=${ports[0]} [b]=${ports[2]})
    declare -gA DUOMQ_ADMIN=([a]=${ports[1]} [b]=${ports[3]})
    for m in a b; do
        if [[ $m == a ]]; then role=primary; else role=backup; fi
        write_duomq_member "$m" "database-duomq-$m.log"
        cat >>"$FAILOVER_DIR/$m/broker.yaml" <<YAML
  store: database
  database:
    urlFile: $FAILOVER_DIR/database-url
    lease:
      duration: ${DATABASE_LEASE_MS}ms
      renewInterval: ${DATABASE_RENEW_MS}ms
      pollInterval: ${DATABASE_POLL_MS}ms
ha:
  policy: sharedStore
  role: $role
  groupName: bench
YAML
    done
    start_duomq_members 's["role"] == "backup" and (s["ha"].get("database") or {}).get("reachable")' || return 1
    DATABASE_LIVE_URL="stomp://127.0.0.1:${DUOMQ_STOMP[a]}"
    DATABASE_LIVE_PID=$(member_pid a)
}

# start_activemq_database_pair: members a and b on the `activemq` database; a takes the
# lease and opens its STOMP port, b waits for the lease.
start_activemq_database_pair() {
    FAILOVER_DIR="$WORK/database-activemq"
    mkdir -p "$FAILOVER_DIR"
    local m ports jdbc
    jdbc=$(find_postgresql_jdbc) || { log "no PostgreSQL JDBC driver found: install libpostgresql-jdbc-java"; return 1; }
    read -r -a ports <<<"$(free_ports 2)"
    declare -gA AMQ_STOMP=([a]=${ports[0]} [b]=${ports[1]})
    for m in a b; do
        write_activemq_instance "$FAILOVER_DIR/$m" activemq-jdbc.xml "${AMQ_STOMP[$m]}" \
            "$LOG_DIR/database-activemq-$m.log" \
            -Dduomqbench.member="$m" \
            -Dduomqbench.jdbcUrl="jdbc:postgresql://127.0.0.1:$PG_PORT/activemq" \
            -Dduomqbench.dbUser="$DATABASE_USER" -Dduomqbench.dbPassword="$PG_PASSWORD"
        sed -i -e "s/@LEASE_MS@/$DATABASE_LEASE_MS/" -e "s/@RENEW_MS@/$DATABASE_RENEW_MS/" \
            "$FAILOVER_DIR/$m/conf/activemq.xml"
        # ActiveMQ puts the jars of ${activemq.base}/lib on its classpath.
        mkdir -p "$FAILOVER_DIR/$m/lib"
        ln -sf "$jdbc" "$FAILOVER_DIR/$m/lib/postgresql.jar"
    done
    start_activemq_members || return 1
    DATABASE_LIVE_URL="stomp://127.0.0.1:${AMQ_STOMP[a]}"
    DATABASE_LIVE_PID=$(member_pid a)
}

# find_postgresql_jdbc: the PostgreSQL JDBC driver jar (Debian: libpostgresql-jdbc-java).
find_postgresql_jdbc() {
    local jar=${POSTGRESQL_JDBC_JAR:-/usr/share/java/postgresql.jar}
    [[ -r $jar ]] && echo "$jar"
}

# commit_probe LABEL: PostgreSQL alone, for DATABASE_PROBE_SECONDS: pgbench on one
# connection, each transaction one INSERT of a 1 KiB row, committed and flushed before
# the next: the most a system that commits once per message can receive at window 1.
# Appends LABEL and pgbench's transactions/s to database-probe.tsv.
commit_probe() {
    local tps
    printf "INSERT INTO commit_probe (body) VALUES (convert_to(repeat('x', 1024), 'UTF8'));\n" >"$WORK/commit-probe.sql"
    psql_ postgres -c 'CREATE TABLE IF NOT EXISTS commit_probe (id bigserial PRIMARY KEY, body bytea)' \
        >>"$LOG_DIR/postgres-probe.log" 2>&1 || true
    PGPASSWORD=$PG_PASSWORD "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$PG_PORT" -U "$DATABASE_USER" \
        -c 1 -T "$DATABASE_PROBE_SECONDS" -f "$WORK/commit-probe.sql" postgres >"$WORK/commit-probe.out" 2>&1 || true
    cat "$WORK/commit-probe.out" >>"$LOG_DIR/postgres-probe.log"
    tps=$(awk '/^tps = / { print $3; exit }' "$WORK/commit-probe.out")
    if [[ -n $tps ]]; then
        printf '%s\t%s\n' "$1" "$tps" >>"$OUT/database-probe.tsv"
    else
        log "database: the commit probe (pgbench) gave no rate (see $LOG_DIR/postgres-probe.log)"
    fi
}

# save_metrics ADMIN_PORT FILE: a duomq broker's /metrics, into FILE.
save_metrics() {
    python3 - "$1" >"$2" 2>/dev/null <<'PY' || true
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5) as r:
    sys.stdout.write(r.read().decode())
PY
}

# database_commits DATABASE: transactions PostgreSQL has committed in DATABASE so far
# (its statistics, which a busy backend reports at most once a second).
database_commits() {
    psql_ postgres -At -c "SELECT xact_commit FROM pg_stat_database WHERE datname = '$1'" 2>/dev/null || echo ''
}

# database_cell TARGET WINDOW SUFFIX: one run against the pair's live member, labelled
# database/TARGET-wWINDOW-SUFFIX; the transactions its database committed meanwhile go
# to database-commits.tsv.
database_cell() {
    local target=$1 window=$2 label="database/$1-w$2$3" before after
    log "$label: 1 KiB persistent 1P+1C w$window (${DURATION} after ${WARMUP} warm-up)"
    before=$(database_commits "$target")
    bench_json "$label" "$OUT/database.jsonl" "database-$target-w$window.log" "$CELL_TIMEOUT" \
        run --url "$DATABASE_LIVE_URL" --destination "/queue/database-$target-w$window$3-$STAMP" \
        --producers 1 --consumers 1 --size 1024 --persistent --window "$window" \
        --duration "$DURATION" --warmup "$WARMUP" --prefetch "$PREFETCH" --ack client-individual \
        --subscribe-header "activemq.prefetchSize=$PREFETCH" \
        --broker-pid "$DATABASE_LIVE_PID" --label "$label" --json
    check_result "$label" --check-run
    # Past the statistics' reporting interval, so that the cell's last commits count.
    sleep 2
    after=$(database_commits "$target")
    if [[ $before =~ ^[0-9]+$ && $after =~ ^[0-9]+$ ]]; then
        printf '%s\t%s\n' "$label" "$((after - before))" >>"$OUT/database-commits.tsv"
    fi
    # duomq's own account of its commits (duomq_database_commit_seconds), which count
    # from the pair's start: the report takes the difference between a round's cells.
    if [[ $target == duomq ]]; then
        save_metrics "${DUOMQ_ADMIN[a]}" "$LOG_DIR/database-duomq-w$window$3.metrics"
    fi
}

# check_result LABEL CHECK: fails LABEL with what database-report.py CHECK finds wrong
# in the last result (BENCH_RESULT), if anything.
check_result() {
    local problem
    [[ -n $BENCH_RESULT ]] || return 0
    problem=$(python3 "$LIB_DIR/database-report.py" "$2" <<<"$BENCH_RESULT")
    [[ -z $problem ]] || fail_cell "$1" "$problem"
}

# database_failover TARGET: 'duomq-bench failover' against the pair that is up.
database_failover() {
    local target=$1 label="database-failover/$1"
    log "$label: $DATABASE_KILLS kills, one every $FAILOVER_EVERY"
    bench_json "$label" "$OUT/database-failover.jsonl" "database-failover-$target.log" \
        "$((DATABASE_KILLS * 120 + 120))" failover "${FAILOVER_ARGS[@]}" \
        --destination "/queue/database-failover-$target-$STAMP" --kills "$DATABASE_KILLS" \
        --kill-every "$FAILOVER_EVERY" --label "$label" --json
    # A lost receipted message, a kill short or an error fails the section.
    check_result "$label" --check-failover
}

run_database() {
    : >"$OUT/database.jsonl"
    : >"$OUT/database-failover.jsonl"
    : >"$OUT/database-commits.tsv"
    : >"$OUT/database-probe.tsv"
    meta database.rounds "$DATABASE_ROUNDS"
    meta database.lease "${DATABASE_LEASE_MS}ms, renewed every ${DATABASE_RENEW_MS}ms, duomq's backup polls every ${DATABASE_POLL_MS}ms"
    meta database.kills "$DATABASE_KILLS"
    if [[ " ${TARGETS[*]} " == *" activemq "* ]]; then
        meta database.jdbc "PostgreSQL JDBC $(dpkg-query -W -f='${Version}' libpostgresql-jdbc-java 2>/dev/null || echo '?')"
    fi
    if ! start_postgres; then
        fail_cell database/postgres "PostgreSQL did not start (see logs/postgres*.log)"
        return
    fi
    # What one commit's WAL flush costs on this disk, beside the window-1 rates.
    measure_fsync database
    local round suffix target window order
    for ((round = 1; round <= DATABASE_ROUNDS; round++)); do
        suffix='' order=(duomq activemq)
        ((round == 1)) || suffix="-r$round"
        ((round % 2 == 1)) || order=(activemq duomq)
        # Other work on the machine shows here: cells taken under load are worth repeating.
        meta "database.load.round$round" "$(cut -d' ' -f1 /proc/loadavg)"
        commit_probe "round$round"
        for target in "${order[@]}"; do
            database_start_pair "$target" "database/$target-w1$suffix" || continue
            for window in "${DATABASE_WINDOWS[@]}"; do
                database_cell "$target" "$window" "$suffix"
            done
            log "database/$target: stopping the pair"
            stop_broker
        done
    done
    for target in duomq activemq; do
        database_start_pair "$target" "database-failover/$target" || continue
        database_failover "$target"
        log "database/$target: stopping the pair"
        stop_broker
    done
    stop_postgres
}

# database_start_pair TARGET LABEL: starts TARGET's pair, or fails LABEL.
database_start_pair() {
    [[ " ${TARGETS[*]} " == *" $1 "* ]] || return 1
    log "database/$1: starting the pair on PostgreSQL"
    if ! "start_${1}_database_pair"; then
        fail_cell "$2" "the pair did not start (see logs/database-$1-*.log)"
        stop_broker
        return 1
    fi
}
