"""Syncthing (Debian's package, linked into .apps/syncthing by tests/apps/setup_syncthing.sh)
for tests/apps/test_syncthing.py: a fresh home with a GUI user and password, every feature
that would reach the network turned off, the GUI and the sync protocol on 127.0.0.1 only;
started inside a BrowserWorld's namespace."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from tests.support.procs import ROOT, Proc

logger = logging.getLogger(__name__)

BINARY = ROOT / ".apps" / "syncthing" / "syncthing"
SETUP = "tests/apps/setup_syncthing.sh"
GUI_PORT = 8384
SYNC_PORT = 22000
USER = "admin"
PASSWORD = "pi-sync-pass"

# options/<key> = value: no discovery, relays, NAT, usage reports, crash reports or upgrades;
# the sync protocol listens on loopback only; no browser is started.
OFFLINE_OPTIONS = {
    "listenAddress": f"tcp://127.0.0.1:{SYNC_PORT}",
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "urAccepted": "-1",
    "urSeen": "3",
    "autoUpgradeIntervalH": "0",
    "crashReportingEnabled": "false",
    "startBrowser": "false",
    "announceLANAddresses": "false",
}


def missing() -> str | None:
    """Why Syncthing cannot be started, or None."""
    if not BINARY.exists():
        return f"Syncthing is not installed in {BINARY.parent}: run {SETUP}"
    return None


def version() -> str:
    out = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def make_home(home: Path) -> dict[str, str]:
    """Generate keys and config.xml in `home` (GUI user and password via `syncthing generate`),
    then make it offline and loopback-only; {"device_id", "api_key"}."""
    home.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [str(BINARY), "generate", "--home", str(home), "--no-default-folder",
         "--skip-port-probing", "--gui-user", USER, "--gui-password", PASSWORD],
        capture_output=True, text=True, timeout=60, check=True,
    )
    device_id = re.search(r"Device ID: (\S+)", out.stdout + out.stderr).group(1)
    config = home / "config.xml"
    tree = ET.parse(config)
    gui = tree.find("gui")
    gui.find("address").text = f"127.0.0.1:{GUI_PORT}"
    options = tree.find("options")
    for key, value in OFFLINE_OPTIONS.items():
        element = options.find(key)
        if element is None:
            element = ET.SubElement(options, key)
        element.text = value
    tree.write(config)
    return {"device_id": device_id, "api_key": gui.find("apikey").text or ""}


def start(world: Any, home: Path) -> Proc:
    """`syncthing serve` in the world's namespace; returns once the GUI listens."""
    env = {"STNOUPGRADE": "1", "STNORESTART": "1", "HOME": str(home)}
    proc = world.start_cmd("syncthing", str(BINARY), "serve", "--home", str(home),
                           "--no-browser", "--no-restart", "--no-upgrade",
                           "--logflags=0", env=env)
    proc.wait_for_log(r"GUI and API listening on", timeout=60)
    return proc


def rest(world: Any, api_key: str, path: str, method: str = "GET", body: Any = None) -> Any:
    """Syncthing's REST API, called directly (not through the tunnel) from inside the namespace."""
    args = ["curl", "-sS", "--fail-with-body", "-X", method, "-H", f"X-API-Key: {api_key}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    text = world.ns_run(*args, f"http://127.0.0.1:{GUI_PORT}{path}")
    return json.loads(text) if text.strip() else None


def config_xml(home: Path) -> ET.Element:
    return ET.parse(home / "config.xml").getroot()
