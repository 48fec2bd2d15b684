#!/bin/sh
# Put this checkout's peerproxyd wheel and the pinned requirements into dist/, so the
# add-on's Dockerfile installs exactly this version (run before copying the add-on to
# Home Assistant's /addons/ folder, or before building it).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python="${PYTHON:-python3}"

rm -rf "$here/dist"
mkdir -p "$here/dist"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$here/dist" "$root"
cp "$root/requirements.lock" "$here/dist/requirements.lock"
ls "$here/dist"
