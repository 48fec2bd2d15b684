"""Device ids and service names: the one place their rules live.

Each device+service gets its own browser origin, `<device>--<service>.<domain>`, so both must
be lowercase DNS-label text, neither may contain "--" (the separator), and together they fit
one 63-character DNS label (one wildcard certificate covers every device). A device id is
derived from the device key (identity.py, docs/security.md 1.1): 32 characters of base32.
"""

from __future__ import annotations

import re

DEVICE_ID = re.compile(r"[a-z2-7]{32}")
"""Lowercase RFC 4648 base32 of 160 bits, no padding."""
SERVICE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,27}[a-z0-9])?")
"""At most 29 characters: 32 + 2 + 29 = 63."""
SEPARATOR = "--"
DNS_LABEL_MAX = 63


def valid_device_id(device_id: str) -> bool:
    return DEVICE_ID.fullmatch(device_id) is not None


def valid_service_name(name: str) -> bool:
    return SERVICE_NAME.fullmatch(name) is not None and SEPARATOR not in name


def origin_label(device_id: str, service: str) -> str:
    """The DNS label of a device+service origin; ValueError if it cannot be one."""
    label = f"{device_id}{SEPARATOR}{service}"
    if not (valid_device_id(device_id) and valid_service_name(service)):
        raise ValueError(f"{label!r}: invalid device id or service name")
    if len(label) > DNS_LABEL_MAX:
        raise ValueError(f"{label!r} is longer than {DNS_LABEL_MAX} characters")
    return label


def split_origin_label(label: str) -> tuple[str, str] | None:
    """(device id, service) from `<device>--<service>`, or None if it is not one."""
    device, sep, service = label.partition(SEPARATOR)
    if not sep or not valid_device_id(device) or not valid_service_name(service):
        return None
    return device, service
