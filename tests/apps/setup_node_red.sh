#!/usr/bin/env bash
# Node-RED for tests/apps/test_node_red.py: npm `node-red` (pinned; 4.x is the line that runs
# on Debian's Node 20, 5.x needs Node >= 22.9) and `bcryptjs` (the test hashes the adminAuth
# password with it), installed into <repo>/.apps/node-red/. Idempotent.
set -euo pipefail

NODE_RED_VERSION=4.1.8
BCRYPTJS_VERSION=3.0.2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="$root/.apps/node-red"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup_node_red: installing Debian nodejs and npm"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
installed="$(node -p "require('$dest/node_modules/node-red/package.json').version" 2>/dev/null || true)"
if [ "$installed" = "$NODE_RED_VERSION" ] && [ -d "$dest/node_modules/bcryptjs" ]; then
    echo "setup_node_red: node-red $NODE_RED_VERSION already in $dest"
    exit 0
fi
mkdir -p "$dest"
cd "$dest"
[ -f package.json ] || echo '{"name": "peerproxyd-test-node-red", "private": true}' > package.json
npm install --no-audit --no-fund --omit=dev --loglevel=error \
    "node-red@$NODE_RED_VERSION" "bcryptjs@$BCRYPTJS_VERSION"
echo "setup_node_red: installed node-red $NODE_RED_VERSION into $dest (node $(node --version))"
