#!/usr/bin/env bash
# Syncthing for tests/apps/test_syncthing.py: Debian's `syncthing` package; <repo>/.apps/syncthing/
# gets a link to its binary and the version it reports. Idempotent.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="$root/.apps/syncthing"

if ! dpkg -s syncthing >/dev/null 2>&1; then
    echo "setup_syncthing: installing Debian syncthing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq syncthing
fi
mkdir -p "$dest"
ln -sfn "$(command -v syncthing)" "$dest/syncthing"
"$dest/syncthing" --version | tee "$dest/version"
echo "setup_syncthing: $dest/syncthing -> $(command -v syncthing)"
