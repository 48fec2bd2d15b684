"""First boot of the peerproxyd image: this device's identities, and how to reach them.

Run once by peerproxyd-firstboot.service (as root, before multi-user.target):

1. For every daemon configuration /etc/peerproxyd/<name>.toml (not the signaling server's),
   its device key, created where peerproxyd@<name>.service will find it: the unit's
   StateDirectory=peerproxyd/<name>, which with DynamicUser= lives in
   /var/lib/private/peerproxyd/<name> (systemd hands it to the service's user at start).
   The device id is derived from that key; nothing needs configuring.
2. A share link per service for the owner (viewer "owner", no expiry), written to
   /etc/peerproxyd/share.txt (root only); the share details (device id, signaling server,
   how to invite more viewers) there and on stdout (the console and the journal). The links
   themselves stay out of the journal, which more users can read than share.txt.
3. /etc/peerproxyd/identity, listing the device ids, marks first boot as done.

PEERPROXYD_ETC moves /etc/peerproxyd and PEERPROXYD_STATE_ROOT /var/lib/private/peerproxyd
(tests).
"""

from __future__ import annotations

import os
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from peerproxyd.config import load
from peerproxyd.errors import ConfigError, IdentityError, ViewerStoreError
from peerproxyd.trust.identity import Identity, load_or_create
from peerproxyd.trust.sharing import share
from peerproxyd.trust.viewers import ViewerStore

OWNER = "owner"
LINK_MARK = "link: "


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


def share_details(path: Path, identity: Identity, state_dir: Path) -> list[str]:
    """Lines telling the owner how to reach and share the services of `path` (device key and
    viewers in `state_dir`), with an owner link per service (lines with LINK_MARK)."""
    device = identity.device_id
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
    store = ViewerStore(state_dir)
    for service in settings.services:
        try:
            store.load()
            link = share(settings, store, device_id=device,
                         fingerprint=identity.fingerprint_bytes, service=service,
                         name=f"{OWNER}-{service}", now=datetime.now(timezone.utc)).link
            lines.append(f"  {service}: {LINK_MARK}{link}")
        except ViewerStoreError as exc:
            lines.append(f"  {service}: no owner link: {exc}")
    lines.append("  invite a viewer (prints a share link to open, or to pass to peerproxyd connect):")
    for service in settings.services:
        lines.append(
            f"  {service}: sudo STATE_DIRECTORY={state_dir} peerproxyd share --config {path} "
            f"--service {service} --name NAME"
        )
    return lines


def without_links(text: str) -> str:
    """`text` with every link replaced by where to find it (a reason for having none stays)."""
    return "".join(
        line.split(LINK_MARK, 1)[0] + "owner link in /etc/peerproxyd/share.txt (root only)\n"
        if LINK_MARK + "http" in line else line
        for line in text.splitlines(keepends=True)
    )


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
            identity = load_or_create(state_root / path.stem)
        except IdentityError as exc:
            lines.append(f"{path.stem}: no device key: {exc}")
            continue
        devices.append(f"{path.stem}={identity.device_id}\n")
        lines += share_details(path, identity, state_root / path.stem)
    text = "\n".join(lines) + "\n"
    write_private(etc / "share.txt", text)
    write_private(marker, "".join(devices))
    sys.stdout.write(without_links(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
