#!/bin/sh
# The image's entrypoint. The first argument is a role:
#   worker [FLAGS]    consume and run invocations; /metrics, /healthz, /readyz on the port
#   gateway [FLAGS]   Function Compute's OpenAPI over HTTP, on the port
#   serve [FLAGS]     worker and gateway in one process, on the port
#   dlq ...           the dead-letter tool, as a one-off (any other asyncinvoke command too)
# The port is ASYNCINVOKE_HTTP_PORT (9000), the address ASYNCINVOKE_HTTP_HOST (0.0.0.0);
# flags given after the role win over both. ASYNCINVOKE_AMQP_URL_FILE names a file (a
# secret) that holds ASYNCINVOKE_AMQP_URL, so the broker's password stays out of the
# container's configuration. `exec` makes the service PID 1, so the stop signal reaches
# it and nothing else.
set -eu
if [ -n "${ASYNCINVOKE_AMQP_URL_FILE:-}" ]; then
    ASYNCINVOKE_AMQP_URL=$(cat "$ASYNCINVOKE_AMQP_URL_FILE")
    export ASYNCINVOKE_AMQP_URL
fi
port="${ASYNCINVOKE_HTTP_PORT:-9000}"
host="${ASYNCINVOKE_HTTP_HOST:-0.0.0.0}"
role="${1:-worker}"
[ "$#" -gt 0 ] && shift
case "$role" in
    worker)
        exec asyncinvoke worker --metrics-host "$host" --metrics-port "$port" "$@" ;;
    gateway | serve)
        exec asyncinvoke "$role" --host "$host" --port "$port" "$@" ;;
    -h | --help | help)
        exec asyncinvoke --help ;;
    -*)
        echo "asyncinvoke-entrypoint: give a role first (worker, gateway, serve, dlq ...)," \
            "then its flags; got $role" >&2
        exit 64 ;;
    *)
        exec asyncinvoke "$role" "$@" ;;
esac
