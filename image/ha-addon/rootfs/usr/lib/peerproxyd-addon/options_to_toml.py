"""Turn the add-on options (/data/options.json) into peerproxyd's TOML file.

Usage: options_to_toml.py OPTIONS_JSON OUTPUT_TOML

A mapping, not a validator: peerproxyd checks every value when it loads the file, and its
messages name the keys below, which follow the options (`services.<name>.upstream` is the
`url` of the service called <name>). The one thing checked here is what a mapping would
lose: two services with the same name.

An empty `device_id` or `secret` is replaced by one generated on the first start and kept
in identity.json beside the options (the add-on's /data survives updates and restarts),
so the device keeps its name and viewers their secret.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

IDENTITY = "identity.json"


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def load_identity(data_dir: Path) -> dict[str, str]:
    """The generated device id and secret, created on the first call."""
    path = data_dir / IDENTITY
    if path.exists():
        identity = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(identity, dict) and {"device_id", "secret"} <= identity.keys():
            return {"device_id": str(identity["device_id"]), "secret": str(identity["secret"])}
    identity = {
        "device_id": "ha-" + secrets.token_hex(4),
        "secret": secrets.token_urlsafe(18),
    }
    tmp = path.with_name(IDENTITY + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(identity, f)
    os.replace(tmp, path)
    print(f"generated device id {identity['device_id']} and its secret (kept in {path})",
          file=sys.stderr)
    print(f"secret for viewers: {identity['secret']}", file=sys.stderr)
    return identity


def convert(options: dict[str, Any], data_dir: Path) -> str:
    """The TOML text for `options`; ValueError for what cannot be mapped."""
    services = options.get("services") or []
    names = [str(s.get("name", "")) for s in services]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"services: the name {twice[0]!r} is used more than once")
    identity: dict[str, str] | None = None
    if not options.get("device_id") or not options.get("secret"):
        identity = load_identity(data_dir)
    device_id = options.get("device_id") or (identity or {})["device_id"]
    secret = options.get("secret") or (identity or {})["secret"]

    lines = [
        "# Written by the peerproxyd add-on from its options at every start: edit those.",
        "[device]",
        f"id = {toml_string(str(device_id))}",
        f"secret = {toml_string(str(secret))}",
        "",
        "[signaling]",
        f"url = {toml_string(str(options.get('signaling_url', '')))}",
    ]
    for service in services:
        lines += [
            "",
            f"[services.{toml_string(str(service.get('name', '')))}]",
            f"upstream = {toml_string(str(service.get('url', '')))}",
        ]
    stun = [str(url) for url in options.get("stun_servers") or []]
    if stun:
        servers = ", ".join(f"{{ urls = {toml_string(url)} }}" for url in stun)
        lines += ["", "[ice]", f"servers = [{servers}]"]
    if "max_peers" in options:
        lines += ["", "[limits]", f"max_peers = {int(options['max_peers'])}"]
    if "log_level" in options:
        lines += ["", "[log]", f"level = {toml_string(str(options['log_level']))}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    options_path, output = Path(argv[1]), Path(argv[2])
    try:
        options = json.loads(options_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"cannot read the add-on options {options_path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(options, dict):
        print(f"{options_path}: expected a JSON object", file=sys.stderr)
        return 2
    try:
        text = convert(options, options_path.parent)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
