#!/usr/bin/env bash
# The live-stream apps of tests/apps/test_camera.py and test_streams.py: Debian's ffmpeg (test
# sources, the media files) and motion (a real camera server: it serves an endless MJPEG
# stream to any number of clients, here from a looping movie instead of a camera device).
# Makes, in <repo>/.apps/ffmpeg/:
#   camera.mkv            60 s of ffmpeg's `testsrc` (640x480, 10 fps, MJPEG): motion's "camera"
#   clip-faststart.mp4    30 s H.264 (640x360, ~10 MB) + `-movflags +faststart` (moov first)
#   clip-moov-end.mp4     the same without faststart (moov last: players seek to the end first)
# Idempotent: installs the Debian packages only if missing, makes each file only if missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/.apps/ffmpeg"
# Debian bookworm's: ffmpeg 5.1, motion 4.5.
PACKAGES=(ffmpeg motion)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup_ffmpeg: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # The tests start motion themselves: a policy-rc.d (Debian's mechanism) keeps the package's
  # own motion service from starting during the install, where a system has one.
  made_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || status=$?
  [[ -n "$made_policy" ]] && rm -f /usr/sbin/policy-rc.d
  [[ "${status:-0}" == 0 ]] || exit "$status"
fi
echo "setup_ffmpeg: $(dpkg-query -W -f='${Package} ${Version}\n' "${PACKAGES[@]}" | paste -sd, -)"

mkdir -p "$DEST"
make_file() {  # make_file NAME ffmpeg-args...: only when NAME is missing, atomically
  local name="$1"
  shift
  if [[ -s "$DEST/$name" ]]; then
    echo "setup_ffmpeg: $DEST/$name present"
    return
  fi
  ffmpeg -hide_banner -loglevel error -nostdin -y "$@" "$DEST/.tmp-$name"
  mv "$DEST/.tmp-$name" "$DEST/$name"
  echo "setup_ffmpeg: made $DEST/$name ($(stat -c %s "$DEST/$name") bytes)"
}

make_file camera.mkv -f lavfi -i testsrc=size=640x480:rate=10 -t 60 -c:v mjpeg -q:v 3 -f matroska
# Noise keeps the bit rate up (~10 MB): big enough that a player fetches it in ranges.
SRC=(-f lavfi -i testsrc=size=640x360:rate=25 -t 30 -vf noise=alls=12:allf=t -c:v libx264
  -preset veryfast -b:v 3M -maxrate 3M -bufsize 3M -pix_fmt yuv420p -g 25)
make_file clip-faststart.mp4 "${SRC[@]}" -movflags +faststart -f mp4
make_file clip-moov-end.mp4 "${SRC[@]}" -f mp4
