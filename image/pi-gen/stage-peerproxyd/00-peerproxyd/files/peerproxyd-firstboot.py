"""First boot of the peerproxyd image: this device's identity, and how to reach it.

Run once by peerproxyd-firstboot.service (as root, before multi-user.target):

1. A device name `pi-<6 hex digits>` and one secret, both random, recorded in
   /etc/peerproxyd/identity (which also marks first boot as done).
2. For every daemon configuration /etc/peerproxyd/<name>.toml (not the signaling server's)
   without a /etc/peerproxyd/<name>.env: that file, root-only, with
   PEERPROXYD_DEVICE__ID=<device>-<name> and PEERPROXYD_DEVICE__SECRET=<secret>.
   peerproxyd@<name>.service reads it (EnvironmentFile=), so the shipped examples run
   under this device's own identity without being edited.
3. The share details (device, secret, signaling server, a `peerproxyd connect` command per
   service) on stdout (the console and the journal) and in /etc/peerproxyd/share.txt.

PEERPROXYD_ETC moves /etc/peerproxyd (tests).
"""

from __future__ import annotations

import os
import secrets
import sys
import tomllib
from pathlib import Path

from peerproxyd.config import load
from peerproxyd.errors import ConfigError
from peerproxyd.names import valid_device_id


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


def instance_device_id(base: str, name: str) -> str:
    device = f"{base}-{name}"
    if not valid_device_id(device):  # an instance name that is no DNS label, or too long
        device = f"{base}-{secrets.token_hex(3)}"
    return device


def share_details(path: Path, env: dict[str, str]) -> list[str]:
    """Lines telling a viewer how to reach the services of `path` with identity `env`."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        settings = load(path)
    except ConfigError as exc:
        return [f"{path.stem}: {path} is not valid yet:", *(f"  {p}" for p in exc.problems)]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    device = settings.device.id
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
    marker = etc / "identity"
    if marker.exists():
        print(f"{marker} exists: first boot is done")
        return 0
    base = "pi-" + secrets.token_hex(3)
    secret = secrets.token_urlsafe(18)
    lines = [
        "peerproxyd: this device's identity (also in /etc/peerproxyd/share.txt)",
        f"  secret for viewers: {secret}",
    ]
    for path in daemon_configs(etc):
        env_file = etc / f"{path.stem}.env"
        if env_file.exists():
            lines.append(f"{path.stem}: keeps its own {env_file}")
            continue
        env = {
            "PEERPROXYD_DEVICE__ID": instance_device_id(base, path.stem),
            "PEERPROXYD_DEVICE__SECRET": secret,
        }
        write_private(
            env_file,
            "# Written at first boot by peerproxyd-firstboot: this device's identity.\n"
            + "".join(f"{key}={value}\n" for key, value in env.items()),
        )
        lines += share_details(path, env)
    text = "\n".join(lines) + "\n"
    write_private(etc / "share.txt", text)
    write_private(marker, f"device={base}\n")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
