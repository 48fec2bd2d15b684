"""First boot of the peerproxyd image: this device's identities, and how to reach them.

Run once by peerproxyd-firstboot.service (as root, before multi-user.target):

1. For every daemon configuration /etc/peerproxyd/<name>.toml (not the signaling server's),
   its device key, created where peerproxyd@<name>.service will find it: the unit's
   StateDirectory=peerproxyd/<name>, which with DynamicUser= lives in
   /var/lib/private/peerproxyd/<name> (systemd hands it to the service's user at start).
   The device id is derived from that key; nothing needs configuring.
2. The share details (device id, signaling server, a `peerproxyd connect` command per
   service) on stdout (the console and the journal) and in /etc/peerproxyd/share.txt.
3. /etc/peerproxyd/identity, listing the device ids, marks first boot as done.

PEERPROXYD_ETC moves /etc/peerproxyd and PEERPROXYD_STATE_ROOT /var/lib/private/peerproxyd
(tests).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from peerproxyd.config import load
from peerproxyd.errors import ConfigError, IdentityError
from peerproxyd.identity import load_or_create


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by root only, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def daemon_configs(etc: Path) -> list[Path]:
    """The daemon configurations in `etc` (files with a [device] table)."""
    found = []
    for path in sorted(etc.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        if "device" in data:
            found.append(path)
    return found


def share_details(path: Path, device: str) -> list[str]:
    """Lines telling a viewer how to reach the services of `path` (device id `device`)."""
    try:
        settings = load(path)
    except ConfigError as exc:
        return [f"{path.stem}: device {device}; {path} is not valid yet:",
                *(f"  {p}" for p in exc.problems)]
    url = settings.signaling.url
    lines = [
        f"{path.stem}: device {device} (systemctl enable --now peerproxyd@{path.stem})",
        f"  signaling server: {url}",
    ]
    for port, service in enumerate(settings.services, start=9000):
        lines.append(
            f"  {service}: peerproxyd connect --signal {url} --device {device} "
            f"--service {service} --listen 127.0.0.1:{port}"
        )
    return lines


def main() -> int:
    etc = Path(os.environ.get("PEERPROXYD_ETC", "/etc/peerproxyd"))
    state_root = Path(os.environ.get("PEERPROXYD_STATE_ROOT", "/var/lib/private/peerproxyd"))
    marker = etc / "identity"
    if marker.exists():
        print(f"{marker} exists: first boot is done")
        return 0
    # systemd wants the private/ directory root-only; it makes it so anyway.
    state_root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_root.mkdir(mode=0o700, exist_ok=True)
    lines = ["peerproxyd: this device's identities (also in /etc/peerproxyd/share.txt)"]
    devices = []
    for path in daemon_configs(etc):
        try:
            device = load_or_create(state_root / path.stem).device_id
        except IdentityError as exc:
            lines.append(f"{path.stem}: no device key: {exc}")
            continue
        devices.append(f"{path.stem}={device}\n")
        lines += share_details(path, device)
    text = "\n".join(lines) + "\n"
    write_private(etc / "share.txt", text)
    write_private(marker, "".join(devices))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
