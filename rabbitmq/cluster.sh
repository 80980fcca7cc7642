#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for tests and for trying failover by hand.
#
#   rabbitmq/cluster.sh start          fresh data directories, 3 nodes joined into one cluster
#   rabbitmq/cluster.sh stop [NODE]    stop every node and remove their data (or stop one
#                                      node, keeping its data, to restart it later)
#   rabbitmq/cluster.sh status         which nodes run, their ports, the cluster's members
#   rabbitmq/cluster.sh kill NODE      kill -9 the node's Erlang VM (its data stays)
#   rabbitmq/cluster.sh restart NODE   start a stopped or killed node again (it rejoins);
#                                      a running one is stopped first
#   rabbitmq/cluster.sh urls           the comma-separated URL list (ASYNCINVOKE_AMQP_URL)
#
# NODE is 1, 2 or 3 (or ai-cluster-N@localhost). The nodes run the installed rabbitmq-server
# as the rabbitmq user (a node refuses root; the Erlang cookie is that user's) on 127.0.0.1:
# AMQP 5681-5683, distribution 25681-25683. The default node on 5672 is never touched.
# Data and logs live under $ASYNCINVOKE_CLUSTER_DIR (default /tmp/asyncinvoke-cluster).
set -euo pipefail

BASE="${ASYNCINVOKE_CLUSTER_DIR:-/tmp/asyncinvoke-cluster}"
RABBITMQ_HOME=/var/lib/rabbitmq
# Debian's /usr/sbin/rabbitmq-server wrapper sends a node's start-up output to the default
# node's /var/log/rabbitmq/startup_log: call the real script, and keep the output per node.
SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
[ -x "$SERVER" ] || SERVER=rabbitmq-server
NODES=(1 2 3)
WAIT_S=60

name() { echo "ai-cluster-$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }
dir() { echo "$BASE/n$1"; }

die() { echo "cluster.sh: $*" >&2; exit 1; }

node_number() {
    case "$1" in
        1|2|3) echo "$1" ;;
        n[123]) echo "${1#n}" ;;
        ai-cluster-[123]@localhost) local n="${1#ai-cluster-}"; echo "${n%@*}" ;;
        *) die "unknown node '$1': use 1, 2 or 3" ;;
    esac
}

ctl() {  # ctl N ARGS...: rabbitmqctl against node N, from the rabbitmq user's home
    local n="$1"; shift
    (cd "$RABBITMQ_HOME" && rabbitmqctl -q -n "$(name "$n")" "$@")
}

beam_pid() {  # the node's VM pid if it runs, else nothing
    local file; file="$(dir "$1")/node.pid"
    [ -s "$file" ] || return 0
    local pid; pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

require() {
    [ "$(id -u)" = 0 ] || die "run as root (the nodes are started as the rabbitmq user)"
    command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    id rabbitmq >/dev/null 2>&1 || die "no 'rabbitmq' user (the rabbitmq-server package makes it)"
    if [ ! -f "$RABBITMQ_HOME/.erlang.cookie" ]; then
        # A fresh machine whose default node never ran: the nodes and rabbitmqctl (run
        # from that home) share the rabbitmq user's cookie, so make it as the node would.
        mkdir -p "$RABBITMQ_HOME"
        head -c 15 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$RABBITMQ_HOME/.erlang.cookie"
        chown rabbitmq:rabbitmq "$RABBITMQ_HOME/.erlang.cookie"
        chmod 400 "$RABBITMQ_HOME/.erlang.cookie"
    fi
}

prepare() {  # a fresh data directory and configuration for node N
    local n="$1" d; d="$(dir "$n")"
    rm -rf "$d"
    mkdir -p "$d/mnesia" "$d/log"
    cat >"$d/rabbitmq.conf" <<CONF
listeners.tcp.default = $(amqp_port "$n")
loopback_users = none
consumer_timeout = 7200000
vm_memory_high_watermark.relative = 0.4
log.console = false
log.file.level = warning
CONF
    echo "[]." >"$d/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$d"
}

launch() {  # start node N's VM on its existing data directory (detached)
    local n="$1" d; d="$(dir "$n")"
    rm -f "$d/node.pid"
    (cd "$RABBITMQ_HOME" && runuser -u rabbitmq -- env \
        PATH="$PATH" HOME="$RABBITMQ_HOME" \
        RABBITMQ_NODENAME="$(name "$n")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
        RABBITMQ_DIST_PORT="$(dist_port "$n")" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_PID_FILE="$d/node.pid" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
        "$SERVER" -detached) >"$d/log/startup.log" 2>&1
}

await_node() {  # until node N's application runs
    local n="$1"
    for _ in $(seq 1 $((WAIT_S * 5))); do
        [ -s "$(dir "$n")/node.pid" ] && break
        sleep 0.2
    done
    ctl "$n" wait "$(dir "$n")/node.pid" --timeout "$WAIT_S" >/dev/null 2>&1 ||
        { tail -n 20 "$(dir "$n")"/log/*.log >&2 2>/dev/null; die "node $n did not start"; }
}

cmd_start() {
    require
    for n in "${NODES[@]}"; do
        [ -z "$(beam_pid "$n")" ] || die "node $n runs already: 'cluster.sh stop' first"
        if (exec 3<>"/dev/tcp/127.0.0.1/$(amqp_port "$n")") 2>/dev/null; then
            die "port $(amqp_port "$n") is taken by another process"
        fi
    done
    for n in "${NODES[@]}"; do prepare "$n"; launch "$n" & done
    wait
    for n in "${NODES[@]}"; do await_node "$n" & done
    wait
    for n in 2 3; do
        # start_app complains on stderr of its peers' tables while it joins: kept apart.
        { ctl "$n" stop_app && ctl "$n" join_cluster "$(name 1)" && ctl "$n" start_app; } \
            >"$(dir "$n")/log/join.log" 2>&1 || { cat "$(dir "$n")/log/join.log" >&2; die "node $n did not join"; }
    done
    # At-least-once dead-lettering (the delay ladder) needs stream_queue.
    ctl 1 enable_feature_flag all
    echo "cluster: 3 nodes on 127.0.0.1:5681-5683 ($(cmd_urls))"
}

stop_node() {  # stop node N, keeping its data; kill -9 if it will not stop
    local n="$1" pid; pid="$(beam_pid "$n")"
    [ -n "$pid" ] || return 0
    ctl "$n" stop >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
    if [ $# -gt 0 ]; then
        local n; n="$(node_number "$1")"
        stop_node "$n"
        echo "cluster: node $n stopped (restart it with 'cluster.sh restart $n')"
        return
    fi
    for n in "${NODES[@]}"; do stop_node "$n" & done
    wait
    # Whatever the VMs left (an epmd registration goes with the VM).
    rm -rf "$BASE"
    echo "cluster: stopped, data removed"
}

cmd_kill() {
    [ $# -eq 1 ] || die "kill NODE"
    local n pid; n="$(node_number "$1")"; pid="$(beam_pid "$n")"
    [ -n "$pid" ] || die "node $n is not running"
    kill -9 "$pid"
    echo "cluster: node $n killed (pid $pid)"
}

cmd_restart() {
    [ $# -eq 1 ] || die "restart NODE"
    require
    local n; n="$(node_number "$1")"
    [ -d "$(dir "$n")/mnesia" ] || die "node $n has no data directory: 'cluster.sh start' first"
    stop_node "$n"
    launch "$n"
    await_node "$n"
    echo "cluster: node $n running again"
}

cmd_status() {
    for n in "${NODES[@]}"; do
        local pid; pid="$(beam_pid "$n")"
        local state="down"
        [ -z "$pid" ] || state="running (pid $pid)"
        printf '%-24s amqp 127.0.0.1:%s  %s\n' "$(name "$n")" "$(amqp_port "$n")" "$state"
    done
    for n in "${NODES[@]}"; do
        if [ -n "$(beam_pid "$n")" ]; then
            echo "cluster members (as node $n sees them):"
            ctl "$n" cluster_status 2>/dev/null | sed "s/\x1b\[[0-9;]*m//g" |
                sed -n '/^Disk Nodes/,/^Versions/p' | grep -v '^Versions' || echo "  (no answer)"
            return
        fi
    done
}

cmd_urls() {
    local urls=()
    for n in "${NODES[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/"); done
    (IFS=,; echo "${urls[*]}")
}

case "${1:-}" in
    start) cmd_start ;;
    stop) shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    kill) shift; cmd_kill "$@" ;;
    restart) shift; cmd_restart "$@" ;;
    urls) cmd_urls ;;
    *) die "usage: cluster.sh start|stop [NODE]|status|kill NODE|restart NODE|urls" ;;
esac
