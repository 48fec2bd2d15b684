"""Node-RED (npm `node-red`, installed into .apps/node-red by tests/apps/setup_node_red.sh)
for tests/apps/test_node_red.py: a user directory with a settings.js that turns on `adminAuth`
(one user, a bcrypt hash of its password), listens on 127.0.0.1 only and asks nothing at the
first visit (no telemetry question, no tour); started inside a BrowserWorld's namespace."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from tests.support.procs import ROOT, Proc

logger = logging.getLogger(__name__)

APP_DIR = ROOT / ".apps" / "node-red"
RED_JS = APP_DIR / "node_modules" / "node-red" / "red.js"
SETUP = "tests/apps/setup_node_red.sh"
PORT = 1880
USER = "admin"
PASSWORD = "pi-red-pass"

SETTINGS = """\
// Written by tests/apps/node_red.py.
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: %(port)d,
    flowFile: "flows.json",
    flowFilePretty: true,
    credentialSecret: false,
    adminAuth: {
        type: "credentials",
        users: [{username: %(user)s, password: %(hash)s, permissions: "*"}],
    },
    diagnostics: {enabled: true, ui: false},
    runtimeState: {enabled: false, ui: false},
    telemetry: {enabled: false, updateNotification: false},
    externalModules: {palette: {allowInstall: false}},
    editorTheme: {tours: false, projects: {enabled: false}},
    logging: {console: {level: "info", metrics: false, audit: false}},
};
"""


def missing() -> str | None:
    """Why Node-RED cannot be started, or None."""
    if not RED_JS.exists():
        return f"Node-RED is not installed in {APP_DIR}: run {SETUP}"
    return None


def version() -> str:
    package = json.loads((RED_JS.parent / "package.json").read_text())
    return str(package["version"])


def bcrypt_hash(password: str) -> str:
    """The bcrypt hash adminAuth wants (bcryptjs, as `node-red admin hash-pw` makes it)."""
    script = "process.stdout.write(require('bcryptjs').hashSync(process.argv[1], 8))"
    out = subprocess.run(["node", "-e", script, password], capture_output=True, text=True,
                         timeout=60, check=True, cwd=APP_DIR)
    return out.stdout


def make_user_dir(user_dir: Path) -> Path:
    """A user directory with the test's settings.js; its path."""
    user_dir.mkdir(parents=True, exist_ok=True)
    settings = user_dir / "settings.js"
    settings.write_text(SETTINGS % {"port": PORT, "user": json.dumps(USER),
                                    "hash": json.dumps(bcrypt_hash(PASSWORD))})
    return settings


def start(world: Any, user_dir: Path) -> Proc:
    """Node-RED in the world's namespace; returns once it serves."""
    proc = world.start_cmd(
        "node-red", "node", str(RED_JS), "--userDir", str(user_dir),
        "--settings", str(user_dir / "settings.js"),
        env={"HOME": str(user_dir), "NODE_RED_ENABLE_PROJECTS": "false"},
    )
    proc.wait_for_log(r"Server now running at", timeout=90)
    return proc


def admin_token(world: Any) -> str:
    """A bearer token for the admin API, got directly (not through the tunnel) in the namespace."""
    body = json.dumps({"client_id": "node-red-admin", "grant_type": "password",
                       "scope": "*", "username": USER, "password": PASSWORD})
    out = world.ns_run("curl", "-sS", "--fail-with-body", "-H", "Content-Type: application/json",
                       "--data-binary", body, f"http://127.0.0.1:{PORT}/auth/token")
    return str(json.loads(out)["access_token"])


def admin_get(world: Any, token: str, path: str) -> Any:
    out = world.ns_run("curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {token}",
                       "-H", "Node-RED-API-Version: v2", f"http://127.0.0.1:{PORT}{path}")
    return json.loads(out)
