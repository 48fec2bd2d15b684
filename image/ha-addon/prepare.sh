#!/bin/sh
# Put this checkout's peerproxyd wheel and the pinned requirements into dist/, so the
# add-on's Dockerfile installs exactly this version (run before copying the add-on to
# Home Assistant's /addons/ folder, or before building it). `prepare.sh DIR`: into DIR
# instead (a copy of the add-on elsewhere).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python="${PYTHON:-python3}"
dist="${1:-$here/dist}"

rm -rf "$dist"
mkdir -p "$dist"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$dist" "$root"
cp "$root/requirements.lock" "$dist/requirements.lock"
ls "$dist"
