#!/bin/sh
# HEALTHCHECK for the container. The daemon (serve) keeps $PEERPROXYD_HEALTH_FILE current
# while its signaling loop is alive (peerproxyd/appliance/notify.py): healthy if the file is younger
# than $max_age seconds; its content, the daemon's status line, is what `docker inspect`
# shows. Without that file (the signaling server, or a daemon not yet ready) ask /healthz.
set -eu

health_file="${PEERPROXYD_HEALTH_FILE:-/tmp/peerproxyd.health}"
max_age="${PEERPROXYD_HEALTH_MAX_AGE:-35}"
signal_port="${PEERPROXYD_SIGNAL_PORT:-8787}"

if [ -f "$health_file" ]; then
    age=$(( $(date +%s) - $(stat -c %Y "$health_file") ))
    cat "$health_file"
    if [ "$age" -le "$max_age" ]; then
        exit 0
    fi
    echo "stale: last update ${age}s ago"
    exit 1
fi

if python3 - "$signal_port" <<'PY'
import sys
import urllib.request

with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=3) as r:
    print(r.read().decode())
PY
then
    exit 0
fi
echo "not ready: no $health_file and no signaling server on port $signal_port"
exit 1
