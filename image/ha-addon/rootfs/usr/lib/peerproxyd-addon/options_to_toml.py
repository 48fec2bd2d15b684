"""Turn the add-on options (/data/options.json) into peerproxyd's TOML file.

Usage: options_to_toml.py OPTIONS_JSON OUTPUT_TOML

A mapping, not a validator: peerproxyd checks every value when it loads the file, and its
messages name the keys below, which follow the options (`services.<name>.upstream` is the
`url` of the service called <name>). The one thing checked here is what a mapping would
lose: two services with the same name.

The device identity needs no option: peerproxyd creates its key on the first start in the
state directory, which is the add-on's /data (beside the options; it survives updates and
restarts), and derives the device id from it. The log shows the id at every start.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


INGRESS_PORT = 8099
INGRESS_PROXY = "172.30.32.2"


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def convert(options: dict[str, Any], data_dir: Path) -> str:
    """The TOML text for `options`; ValueError for what cannot be mapped."""
    services = options.get("services") or []
    names = [str(s.get("name", "")) for s in services]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"services: the name {twice[0]!r} is used more than once")
    lines = [
        "# Written by the peerproxyd add-on from its options at every start: edit those.",
        "[device]",
        f"state_dir = {toml_string(str(data_dir))}",
    ]
    if options.get("name"):
        lines.append(f"name = {toml_string(str(options['name']))}")
    lines += [
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
        if service.get("host"):
            lines.append(f"host = {toml_string(str(service['host']))}")
        if service.get("forwarded_for"):
            lines.append("forwarded_for = true")
    stun = [str(url) for url in options.get("stun_servers") or []]
    if stun:
        servers = ", ".join(f"{{ urls = {toml_string(url)} }}" for url in stun)
        lines += ["", "[ice]", f"servers = [{servers}]"]
    if "max_peers" in options:
        lines += ["", "[limits]", f"max_peers = {int(options['max_peers'])}"]
    # The Ingress panel: Supervisor's proxy (172.30.32.2) is its only client.
    lines += ["", "[daemon]", f'panel = "0.0.0.0:{INGRESS_PORT}"', f'panel_allow = ["{INGRESS_PROXY}"]']
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
