# shellcheck shell=bash disable=SC2034 # BROKER_* are read by compare.sh
# Start, await and stop the brokers that bench/compare.sh measures.
#
# Each broker runs as a child process of compare.sh, in its own session (setsid) so
# that Ctrl-C reaches the script, which then stops the broker in order. Each listens
# on 127.0.0.1 only, on ports picked free at start, and keeps its data under $WORK
# (a mktemp directory). Nothing here uses a service manager or touches the system's
# own broker instances. Sourced by compare.sh, which sets:
#   LIB_DIR       this directory
#   WORK          the run's temporary directory
#   LOG_DIR       where broker logs go
#   DUOMQ_BROKER  the duomq-broker binary
#   START_TIMEOUT seconds a broker may take to accept STOMP clients
#   STOP_TIMEOUT  seconds a broker may take to exit before it gets SIGKILL
#
# start_TARGET sets, on success:
#   BROKER_URL      stomp://127.0.0.1:PORT
#   BROKER_LOGIN    login for CONNECT ('' for none)
#   BROKER_PASSCODE passcode for CONNECT
#   BROKER_PID      the process whose RSS is the broker's (java, beam.smp, duomq-broker)
# and records how to stop it; stop_broker stops whatever is running (also from traps).

ACTIVEMQ_HOME=${ACTIVEMQ_HOME:-/usr/share/activemq}
RABBITMQ_SBIN=/usr/lib/rabbitmq/bin
RABBITMQ_NODE=duomqbench@localhost
# RabbitMQ takes STOMP's CONNECT `host` header as the virtual host, and duomq's client
# (so duomq-bench) sends the URL's host there. The node gets a virtual host of that
# name, open to guest, instead of the default "/".
RABBITMQ_VHOST=/

# The stop function of the running broker, '' when none runs.
RUNNING_STOP=''
BROKER_URL='' BROKER_LOGIN='' BROKER_PASSCODE='' BROKER_PID=''

probe() { python3 "$LIB_DIR/probe.py" "$@"; }

# bench_json LABEL JSONL LOG LIMIT ARGS...: duomq-bench ARGS, killed after LIMIT seconds,
# its stderr appended to logs/LOG and its result (the last line it prints, JSON) to
# JSONL and BENCH_RESULT. A run that exits non-zero or prints no JSON fails LABEL
# (fail_cell) instead and leaves BENCH_RESULT empty.
bench_json() {
    local label=$1 jsonl=$2 log=$3 limit=$4 out="$WORK/bench-result.json" rc=0
    shift 4
    BENCH_RESULT=''
    timeout --foreground -k 10 "$limit" "$BENCH" "$@" >"$out" 2>>"$LOG_DIR/$log" || rc=$?
    if ((rc != 0)); then
        fail_cell "$label" "duomq-bench $1 exited with $rc (see logs/$log)"
    elif ! tail -n 1 "$out" | python3 -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; then
        fail_cell "$label" "duomq-bench $1 printed no JSON result (see logs/$log)"
    else
        BENCH_RESULT=$(tail -n 1 "$out")
        printf '%s\n' "$BENCH_RESULT" >>"$jsonl"
    fi
}

free_ports() { probe free-ports "$1" | paste -sd' '; }

# is_running PID: the process exists and is not a zombie.
is_running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# await_exit PID SECONDS: wait until PID (a child of this shell, or of one of its
# children) exits; SIGKILL it when SECONDS pass first. Polls: a broker's exit is not
# an event this shell can wait for with a timeout otherwise.
await_exit() {
    local pid=$1 timeout=$2 ticks=0
    while is_running "$pid"; do
        if ((ticks >= timeout * 5)); then
            log "process $pid still running after ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
        ticks=$((ticks + 1))
    done
    wait "$pid" 2>/dev/null || true
}

# rss_mib PID: resident set size in MiB, from /proc.
rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status" 2>/dev/null
}

stop_broker() {
    if [[ -n $RUNNING_STOP ]]; then
        local fn=$RUNNING_STOP
        RUNNING_STOP=''
        "$fn"
    fi
}

# --- duomq ------------------------------------------------------------------------

DUOMQ_PID=''

# start_duomq [ARGS...]: ARGS go to 'duomq-broker run' after the listeners (e.g. --config).
start_duomq() {
    local dir="$WORK/duomq" stomp admin
    mkdir -p "$dir/data"
    read -r stomp admin <<<"$(free_ports 2)"
    # fsync before receipt is the default (storage settings untouched).
    setsid "$DUOMQ_BROKER" run --data-dir "$dir/data" \
        --stomp-listen "127.0.0.1:$stomp" --admin-listen "127.0.0.1:$admin" "$@" \
        </dev/null >"$LOG_DIR/duomq.log" 2>&1 &
    DUOMQ_PID=$!
    RUNNING_STOP=stop_duomq
    if ! probe await-http --url "http://127.0.0.1:$admin/readyz" --timeout "$START_TIMEOUT" --pid "$DUOMQ_PID"; then
        stop_broker
        return 1
    fi
    BROKER_URL="stomp://127.0.0.1:$stomp"
    BROKER_LOGIN='' BROKER_PASSCODE=''
    BROKER_PID=$DUOMQ_PID
}

stop_duomq() {
    # SIGTERM: duomq flushes its journal and exits 0.
    kill -TERM "$DUOMQ_PID" 2>/dev/null || true
    await_exit "$DUOMQ_PID" "$STOP_TIMEOUT"
}

# --- ActiveMQ ----------------------------------------------------------------------

ACTIVEMQ_PID=''

# activemq_command BASE PORT XML: sets ACTIVEMQ_CMD to what `activemq console` runs,
# without its su/pid-file handling and with the directories under BASE: the java
# process is then the broker, and its pid the broker's. XML is the broker config.
activemq_command() {
    local base=$1 port=$2 xml=$3 java opts
    # The JVM and its options (heap size) as the Debian package's launcher sets them;
    # the options file refers to $INSTANCE.
    # shellcheck disable=SC1091
    opts=$(INSTANCE=main && . "$ACTIVEMQ_HOME/activemq-options" >/dev/null 2>&1 && printf '%s' "${ACTIVEMQ_OPTS:-}") || opts=''
    # shellcheck disable=SC1091
    java=$(INSTANCE=main && . "$ACTIVEMQ_HOME/activemq-options" >/dev/null 2>&1 && printf '%s' "${JAVA_HOME:-}") || java=''
    if [[ -n $java && -x $java/bin/java ]]; then java=$java/bin/java; else java=java; fi
    # shellcheck disable=SC2206 # the options are words
    ACTIVEMQ_CMD=("$java" $opts
        --add-reads=java.xml=java.logging
        --add-opens java.base/java.security=ALL-UNNAMED
        --add-opens java.base/java.net=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.base/java.util=ALL-UNNAMED
        --add-opens java.naming/javax.naming.spi=ALL-UNNAMED
        --add-opens java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED
        --add-opens java.base/java.util.concurrent=ALL-UNNAMED
        --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
        -Djava.awt.headless=true
        -Djava.io.tmpdir="$base/tmp"
        -Dactivemq.classpath="$base/conf"
        -Dactivemq.home="$ACTIVEMQ_HOME"
        -Dactivemq.base="$base"
        -Dactivemq.conf="$base/conf"
        -Dactivemq.data="$base/data"
        -Dduomqbench.stompPort="$port"
        -jar "$ACTIVEMQ_HOME/bin/activemq.jar" start "xbean:file:$xml")
}

start_activemq() {
    local base="$WORK/activemq" port
    mkdir -p "$base/conf" "$base/data" "$base/tmp"
    cp "$LIB_DIR/activemq.xml" "$base/conf/activemq.xml"
    cp "$LIB_DIR/activemq-log4j.properties" "$base/conf/log4j.properties"
    port=$(free_ports 1)
    activemq_command "$base" "$port" "$base/conf/activemq.xml"
    setsid "${ACTIVEMQ_CMD[@]}" </dev/null >"$LOG_DIR/activemq.log" 2>&1 &
    ACTIVEMQ_PID=$!
    RUNNING_STOP=stop_activemq
    if ! probe await-stomp --url "stomp://127.0.0.1:$port" --timeout "$START_TIMEOUT" --pid "$ACTIVEMQ_PID"; then
        stop_broker
        return 1
    fi
    BROKER_URL="stomp://127.0.0.1:$port"
    BROKER_LOGIN='' BROKER_PASSCODE=''
    BROKER_PID=$ACTIVEMQ_PID
}

stop_activemq() {
    # SIGTERM runs ActiveMQ's shutdown hook, which closes KahaDB cleanly.
    kill -TERM "$ACTIVEMQ_PID" 2>/dev/null || true
    await_exit "$ACTIVEMQ_PID" "$STOP_TIMEOUT"
}

# --- RabbitMQ ----------------------------------------------------------------------

RABBIT_DIR='' RABBIT_SCRIPT_PID='' RABBIT_BEAM_PID='' EPMD_PID=''

# The node's private environment. HOME holds the node's own .erlang.cookie; the node,
# its CLI and epmd meet on a private epmd port; Erlang distribution stays on loopback.
rabbit_env_vars() {
    RABBIT_ENV=(
        HOME="$RABBIT_DIR/home"
        ERL_EPMD_ADDRESS=127.0.0.1
        ERL_EPMD_PORT="$RABBIT_EPMD_PORT"
        ERL_CRASH_DUMP="$RABBIT_DIR/log/erl_crash.dump"
        RABBITMQ_NODENAME="$RABBITMQ_NODE"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$RABBIT_AMQP_PORT"
        RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT"
        RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
        RABBITMQ_LOG_BASE="$RABBIT_DIR/log"
        RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
        RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
        RABBITMQ_PID_FILE="$RABBIT_DIR/beam.pid"
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    )
}

rabbitmqctl_() { env "${RABBIT_ENV[@]}" "$RABBITMQ_SBIN/rabbitmqctl" -n "$RABBITMQ_NODE" "$@"; }

# start_rabbitmq NAME [PLUGINS]: a fresh node per target (classic, quorum), so that RSS
# and disk state of one do not carry over into the other. PLUGINS: the plugins to enable,
# comma-separated (default rabbitmq_stomp, which the start-up check speaks).
start_rabbitmq() {
    local name=$1 plugins=${2:-rabbitmq_stomp} stomp
    RABBIT_DIR="$WORK/$name"
    mkdir -p "$RABBIT_DIR/home" "$RABBIT_DIR/mnesia" "$RABBIT_DIR/log"
    read -r stomp RABBIT_AMQP_PORT RABBIT_DIST_PORT RABBIT_EPMD_PORT <<<"$(free_ports 4)"
    sed "s/@STOMP_PORT@/$stomp/" "$LIB_DIR/rabbitmq.conf" >"$RABBIT_DIR/rabbitmq.conf"
    echo "[$plugins]." >"$RABBIT_DIR/enabled_plugins"
    : >"$RABBIT_DIR/rabbitmq-env.conf"
    rabbit_env_vars
    RUNNING_STOP=stop_rabbitmq

    # Our own epmd, so that none is left behind as a daemon when the node stops.
    setsid env ERL_EPMD_ADDRESS=127.0.0.1 epmd -port "$RABBIT_EPMD_PORT" \
        </dev/null >"$LOG_DIR/$name-epmd.log" 2>&1 &
    EPMD_PID=$!

    # The package's rabbitmq-server script, called directly: the wrapper in /usr/sbin
    # would switch to the rabbitmq user and the system's data directory.
    (cd "$RABBIT_DIR" && exec setsid env "${RABBIT_ENV[@]}" "$RABBITMQ_SBIN/rabbitmq-server") \
        </dev/null >"$LOG_DIR/$name.log" 2>&1 &
    RABBIT_SCRIPT_PID=$!
    if ! probe await-stomp --url "stomp://guest:guest@127.0.0.1:$stomp" \
        --timeout "$START_TIMEOUT" --pid "$RABBIT_SCRIPT_PID"; then
        stop_broker
        return 1
    fi
    if ! rabbitmqctl_ await_startup --timeout "$START_TIMEOUT" >>"$LOG_DIR/$name.log" 2>&1; then
        log "rabbitmqctl await_startup failed (see $LOG_DIR/$name.log)"
        stop_broker
        return 1
    fi
    RABBIT_BEAM_PID=$(cat "$RABBIT_DIR/beam.pid")
    BROKER_URL="stomp://127.0.0.1:$stomp"
    BROKER_LOGIN=guest BROKER_PASSCODE=guest
    BROKER_PID=$RABBIT_BEAM_PID
}

stop_rabbitmq() {
    if [[ -z $RABBIT_BEAM_PID && -s $RABBIT_DIR/beam.pid ]]; then
        RABBIT_BEAM_PID=$(cat "$RABBIT_DIR/beam.pid")
    fi
    if is_running "$RABBIT_SCRIPT_PID"; then
        # What the run declared (type, durability), for the record.
        rabbitmqctl_ list_queues -p "$RABBITMQ_VHOST" name type durable auto_delete arguments messages \
            >"$LOG_DIR/$(basename "$RABBIT_DIR")-queues.txt" 2>&1 || true
        # `rabbitmqctl stop` returns once the node has stopped; the script then exits.
        rabbitmqctl_ stop >>"$LOG_DIR/$(basename "$RABBIT_DIR")-stop.log" 2>&1 ||
            kill -TERM "$RABBIT_SCRIPT_PID" 2>/dev/null || true
    fi
    await_exit "$RABBIT_SCRIPT_PID" "$STOP_TIMEOUT"
    # Only if the script died without taking the VM with it.
    if [[ -n $RABBIT_BEAM_PID ]] && is_running "$RABBIT_BEAM_PID"; then
        kill -TERM "$RABBIT_BEAM_PID" 2>/dev/null || true
        await_exit "$RABBIT_BEAM_PID" "$STOP_TIMEOUT"
    fi
    RABBIT_BEAM_PID=''
    kill -TERM "$EPMD_PID" 2>/dev/null || true
    await_exit "$EPMD_PID" "$STOP_TIMEOUT"
}
