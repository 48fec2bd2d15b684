#!/usr/bin/env bash
# Home Assistant for tests/apps/test_home_assistant.py, in <repo>/.apps/home-assistant/:
#   venv/    Python 3.13 (pyenv's) with homeassistant==2025.4.4, the newest release that
#            runs on Python 3.13.0 (later ones need a newer Python)
#   installed-2025.4.4   the marker: present = done (the script is then a no-op)
# HA installs its integrations' requirements (home-assistant-frontend, pyotp, pyqrcode for
# the tests' configuration) with pip at its FIRST START, which cannot work inside a test's
# network namespace. So this script starts HA once on 127.0.0.1 with the tests' own
# configuration (tests/apps/home_assistant.py) in a throwaway config dir, waits until its
# start is over (bounded), and stops it by PID: the packages stay in the venv.
# Measured here (2 cores, pip's cache cold): pip install 2 min 40 s; the first start 35 s.
set -euo pipefail

VERSION=2025.4.4
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HOME_DIR="$ROOT/.apps/home-assistant"
VENV="$HOME_DIR/venv"
MARKER="$HOME_DIR/installed-$VERSION"
START_TIMEOUT=600  # seconds for the first start (pip downloads the frontend, ~40 MB)

if [[ -f "$MARKER" && -x "$VENV/bin/hass" ]]; then
    echo "setup_home_assistant: Home Assistant $VERSION already installed in $HOME_DIR"
    exit 0
fi

PYTHON=""
for p in "$HOME"/.pyenv/versions/3.13*/bin/python3; do
    [[ -x "$p" ]] && PYTHON="$p"
done
if [[ -z "$PYTHON" ]]; then
    echo "setup_home_assistant: no Python 3.13 in ~/.pyenv/versions (Home Assistant $VERSION needs it)" >&2
    exit 1
fi

mkdir -p "$HOME_DIR"
started=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "homeassistant==$VERSION"
echo "setup_home_assistant: pip installed homeassistant==$VERSION with $PYTHON in $((SECONDS - started)) s"

# The first start, on a free loopback port, with a config dir that is thrown away after.
config_dir="$(mktemp -d)"
port="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
(cd "$ROOT" && "$VENV/bin/python" -c 'import sys; from tests.apps.home_assistant import configuration; sys.stdout.write(configuration(int(sys.argv[1])))' "$port") \
    > "$config_dir/configuration.yaml"
log="$config_dir/first-start.log"
started=$SECONDS
"$VENV/bin/hass" --config "$config_dir" > "$log" 2>&1 &
pid=$!
stop_ha() {
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
trap 'stop_ha; rm -rf "$config_dir"' EXIT
ok=""
while (( SECONDS - started < START_TIMEOUT )); do
    if ! kill -0 "$pid" 2>/dev/null; then
        break
    fi
    # "initialized" comes after every integration (and its requirements) is set up.
    if grep -q "Home Assistant initialized in" "$log"; then
        ok=yes
        break
    fi
    sleep 1
done
if [[ -z "$ok" ]] || grep -q "Unable to install package" "$log" \
        || ! "$VENV/bin/python" -c 'import hass_frontend' 2>/dev/null; then
    echo "setup_home_assistant: Home Assistant's first start failed (or took over $START_TIMEOUT s); its log:" >&2
    tail -40 "$log" >&2
    exit 1
fi
echo "setup_home_assistant: first start on 127.0.0.1:$port installed the integrations' requirements in $((SECONDS - started)) s"
stop_ha
touch "$MARKER"
echo "setup_home_assistant: Home Assistant $VERSION ready in $HOME_DIR"
