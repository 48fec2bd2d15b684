#!/bin/bash
# Build a Raspberry Pi OS Lite image with peerproxyd: pi-gen's stage0-stage2 and then
# stage-peerproxyd, which installs peerproxyd into /opt/peerproxyd with its units.
#
#   FIRST_USER_PASS=... image/pi-gen/build.sh [PI_GEN_DIR]
#   image/pi-gen/build.sh --stage-only DIR     # only assemble the stage into DIR
#
# PI_GEN_DIR is a pi-gen checkout (default: a clone in image/pi-gen/work/pi-gen). pi-gen
# needs root and its own dependencies (its README); it runs its build.sh, or
# build-docker.sh with USE_DOCKER=1. The image ends up in PI_GEN_DIR/deploy/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
python="${PYTHON:-python3}"

# The stage as pi-gen reads it: ours, plus this checkout's wheel, pinned requirements,
# systemd units and example configurations in its files/.
assemble_stage() {
    local dest="$1"
    local files="$dest/00-peerproxyd/files"
    rm -rf "$dest"
    mkdir -p "$dest"
    cp -a "$here/stage-peerproxyd/." "$dest/"
    mkdir -p "$files/dist"
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$files/dist" "$root"
    cp "$root/requirements.lock" "$files/dist/"
    cp "$root/systemd/peerproxyd@.service" "$root/systemd/peerproxy-signal.service" "$files/"
    cp "$root/config/camera.toml" "$root/config/homeassistant.toml" \
        "$root/config/signal.toml" "$files/"
}

if [ "${1:-}" = "--stage-only" ]; then
    assemble_stage "${2:?usage: build.sh --stage-only DIR}"
    exit 0
fi

if [ -z "${FIRST_USER_PASS:-}" ]; then
    echo "build.sh: set FIRST_USER_PASS (the password of user pi on the image)" >&2
    exit 2
fi

pi_gen="${1:-$here/work/pi-gen}"
if [ ! -d "$pi_gen" ]; then
    git clone --depth 1 https://github.com/RPi-Distro/pi-gen.git "$pi_gen"
fi
stage="$pi_gen/stage-peerproxyd"
assemble_stage "$stage"

cp "$here/config" "$pi_gen/config"
{
    echo "STAGE_LIST=\"stage0 stage1 stage2 $stage\""
    printf 'FIRST_USER_PASS=%q\n' "$FIRST_USER_PASS"
} >> "$pi_gen/config"
# stage2 exports the plain Lite image too; only ours is wanted.
touch "$pi_gen/stage2/SKIP_IMAGES"

cd "$pi_gen"
if [ "${USE_DOCKER:-0}" = "1" ]; then
    ./build-docker.sh
else
    ./build.sh
fi
