#!/bin/sh
# Container entry point (run by tini, which forwards signals and reaps).
#
#   docker run ... peerproxyd                 serve /etc/peerproxyd/peerproxyd.toml
#   docker run ... peerproxyd serve           the same ($PEERPROXYD_CONFIG picks another file)
#   docker run ... peerproxyd signal          signaling server: /etc/peerproxyd/signal.toml if
#                                             mounted, else every interface on port 8787
#   docker run ... peerproxyd check-config [FILE]
#   docker run ... peerproxyd id              the device id (creates the device key if needed)
#   docker run ... peerproxyd connect ...     any other peerproxyd subcommand
#   docker run ... peerproxyd sh              anything else runs as given
#
# peerproxyd replaces this shell (exec), so SIGTERM from `docker stop` reaches the daemon,
# which drains open requests for [daemon] drain_timeout seconds: give `docker stop` more
# than that (--stop-timeout 30, or stop_grace_period: 30s in compose).
set -eu

config="${PEERPROXYD_CONFIG:-/etc/peerproxyd/peerproxyd.toml}"
signal_config="${PEERPROXYD_SIGNAL_CONFIG:-/etc/peerproxyd/signal.toml}"

if [ "$#" -eq 0 ]; then
    set -- serve
fi

case "$1" in
    serve)
        shift
        if [ ! -f "$config" ]; then
            echo "peerproxyd: no configuration file at $config" >&2
            echo "peerproxyd: mount one, e.g. -v \"\$PWD/camera.toml:$config:ro\"," \
                "or set PEERPROXYD_CONFIG" >&2
            exit 2
        fi
        exec peerproxyd serve --config "$config" "$@"
        ;;
    signal)
        shift
        if [ -f "$signal_config" ]; then
            exec peerproxyd signal --config "$signal_config" "$@"
        fi
        exec peerproxyd signal --host 0.0.0.0 "$@"
        ;;
    check-config)
        shift
        exec peerproxyd check-config "${1:-$config}"
        ;;
    id)
        shift
        exec peerproxyd id --config "$config" "$@"
        ;;
    connect | demo | -v | --verbose | --version | -h | --help)
        exec peerproxyd "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
