#!/usr/bin/env bash
# Make sure a RabbitMQ answers for `make run` and `make test`.
#
# 1. If the broker in ASYNCINVOKE_AMQP_URL (default 127.0.0.1:5672) answers, use it.
# 2. Otherwise, for a local URL, start the local rabbitmq-server, installing Debian's
#    package first when it is missing and we are root.
# 3. Otherwise say exactly what to do, and fail.
# On a broker we started or that runs locally, enable every feature flag: quorum queues'
# at-least-once dead-lettering (which the delay ladder relies on) needs stream_queue.
set -euo pipefail

url="${ASYNCINVOKE_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
hostport="${url#*://}"
hostport="${hostport#*@}"
hostport="${hostport%%/*}"
host="${hostport%%:*}"
port="5672"
[[ "$hostport" == *:* ]] && port="${hostport##*:}"
[[ "$url" == amqps://* && "$hostport" != *:* ]] && port="5671"

# Answers AMQP, not only TCP: a node out of file descriptors accepts connections and
# never starts their handshake.
answers() {
    (
        exec 3<>"/dev/tcp/$host/$port" || exit 1
        printf 'AMQP\x00\x00\x09\x01' >&3
        [ -n "$(timeout 5 head -c 1 <&3 | od -An -tx1)" ]
    ) 2>/dev/null
}

enable_flags() {
    if command -v rabbitmqctl >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        rabbitmqctl -q enable_feature_flag all >/dev/null 2>&1 || true
    fi
}

if answers; then
    echo "rabbitmq: answering at $host:$port"
    case "$host" in 127.*|localhost) enable_flags ;; esac
    exit 0
fi

case "$host" in
    127.*|localhost) ;;
    *)
        echo "rabbitmq: nothing answers at $host:$port (from ASYNCINVOKE_AMQP_URL)." >&2
        echo "  Start that broker, or unset ASYNCINVOKE_AMQP_URL to use a local one." >&2
        exit 1 ;;
esac

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "rabbitmq: not installed; installing Debian's rabbitmq-server package"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq rabbitmq-server >/dev/null
    else
        cat >&2 <<MSG
rabbitmq: nothing answers at $host:$port and rabbitmq-server is not installed.
  On Debian/Ubuntu:  sudo apt-get install rabbitmq-server && sudo systemctl start rabbitmq-server
  Or in a container: docker run -d -p 5672:5672 rabbitmq:3.13
  Or point ASYNCINVOKE_AMQP_URL at a broker you have.
MSG
        exit 1
    fi
fi

echo "rabbitmq: starting the local rabbitmq-server"
# Every quorum queue keeps files open; a soft limit of 1024 open files runs out after a
# few hundred queues, and then the node accepts connections without ever answering them.
# Debian's rabbitmq-server starts the node through su, whose PAM session resets the limit,
# so the limit is raised (to the hard limit) in the rabbitmq user's own shell.
node_bin=/usr/lib/rabbitmq/bin/rabbitmq-server
if [ "$(id -u)" = 0 ] && [ -x "$node_bin" ] && id rabbitmq >/dev/null 2>&1; then
    (cd /var/lib/rabbitmq && su rabbitmq -s /bin/sh -c "ulimit -n \$(ulimit -Hn); exec $node_bin -detached")
elif [ "$(id -u)" = 0 ]; then
    rabbitmq-server -detached
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo rabbitmq-server -detached
else
    echo "rabbitmq: cannot start it without root; run: sudo rabbitmq-server -detached" >&2
    exit 1
fi

for _ in $(seq 1 90); do
    if answers; then
        enable_flags
        echo "rabbitmq: answering at $host:$port"
        exit 0
    fi
    sleep 1
done
echo "rabbitmq: started but not answering at $host:$port after 90 s; see /var/log/rabbitmq/" >&2
exit 1
