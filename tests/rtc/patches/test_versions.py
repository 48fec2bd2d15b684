"""rtc/patches/versions.py: each patch applies only to an aiortc/aioice it was checked against.

On any other version `install()`/`configure()` leaves the library as it is and says so in
one log line; and the versions requirements.lock pins are ones every patch was read against.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aioice.ice
import aioice.turn
import pytest
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcsctptransport import RTCSctpTransport

from peerproxyd.rtc.patches import versions

ROOT = Path(__file__).resolve().parents[3]
PATCHES = sorted(p.stem for p in (ROOT / "peerproxyd" / "rtc" / "patches").glob("aio*.py"))


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"peerproxyd.rtc.patches.{name}")


# What each patch changes: the patched attribute, the module's saved original, how to apply it.
TARGETS: dict[str, tuple[Any, str, str, Callable[[ModuleType], None]]] = {
    "aioice_consent": (aioice.ice.Connection, "query_consent", "_ORIGINAL_QUERY_CONSENT",
                       lambda m: m.install()),
    "aioice_follow": (aioice.ice.Connection, "check_incoming", "_ORIGINAL_CHECK_INCOMING",
                      lambda m: m.install()),
    "aioice_mdns": (aioice.ice.Connection, "add_remote_candidate",
                    "_ORIGINAL_ADD_REMOTE_CANDIDATE", lambda m: m.install()),
    "aioice_nomination": (aioice.ice.Connection, "check_start", "_ORIGINAL_CHECK_START",
                          lambda m: m.install()),
    "aioice_ports": (aioice.ice.Connection, "get_component_candidates", "_ORIGINAL",
                     lambda m: m.configure(range(50000, 50010))),
    "aioice_tuning": (aioice.ice, "get_host_addresses", "_ORIGINAL_GET_HOST_ADDRESSES",
                      lambda m: m.configure(host_addresses=["127.0.0.1"])),
    "aiortc_certificate": (RTCCertificate, "generateCertificate", "_generate_fresh",
                           lambda m: m.install()),
    "aiortc_dtls": (RTCDtlsTransport, "_write_ssl", "_ORIGINAL_WRITE_SSL",
                    lambda m: m.install()),
    "aiortc_receive": (RTCSctpTransport, "_mark_received", "_ORIGINAL_MARK_RECEIVED",
                       lambda m: m.install()),
    "aiortc_sack": (RTCSctpTransport, "_send_sack", "_ORIGINAL_SEND_SACK",
                    lambda m: m.install()),
    "aiortc_transmit": (RTCSctpTransport, "_transmit", "_ORIGINAL_TRANSMIT",
                        lambda m: m.install()),
}


def _current(owner: Any, attr: str) -> Any:
    value = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
    return value.__func__ if isinstance(value, classmethod) else value


def _put_back(owner: Any, attr: str, original: Any) -> None:
    wrapped = isinstance(owner, type) and isinstance(owner.__dict__[attr], classmethod)
    setattr(owner, attr, classmethod(original) if wrapped else original)


SAVED = [
    (aioice.ice.Connection, "query_consent"), (aioice.ice.Connection, "add_remote_candidate"),
    (aioice.ice.Connection, "check_start"), (aioice.ice.Connection, "get_component_candidates"),
    (aioice.ice.Connection, "check_incoming"),
    (aioice.ice, "get_host_addresses"), (aioice.turn, "UDP_SOCKET_BUFFER_SIZE"),
    (aioice.mdns, "create_mdns_protocol"),
    (RTCCertificate, "generateCertificate"), (RTCDtlsTransport, "_write_ssl"),
    (RTCSctpTransport, "_mark_received"), (RTCSctpTransport, "_send_sack"),
    (RTCSctpTransport, "_transmit"), (RTCSctpTransport, "_receive_sack_chunk"),
]


@pytest.fixture
def restored() -> Iterator[None]:
    """Put aiortc and aioice back as they were: patches are process-wide."""
    before = [(owner, name, owner.__dict__[name]) for owner, name in SAVED]
    yield
    for owner, name, value in before:
        setattr(owner, name, value)


def test_every_patch_is_in_the_table() -> None:
    assert PATCHES == sorted(TARGETS)


@pytest.mark.parametrize("name", PATCHES)
def test_each_patch_says_why_and_what_it_was_checked_against(name: str) -> None:
    module = _module(name)
    library = name.split("_")[0]
    assert set(module.CHECKED) == {library}
    doc = " ".join((module.__doc__ or "").split())
    assert re.search(r"(aiortc|aioice) (1\.16|0\.13)", doc), "name what upstream does wrong"
    assert "tests/" in doc, "name the test that shows the patch is still needed"


@pytest.mark.parametrize("name", PATCHES)
def test_the_pinned_versions_were_checked(name: str) -> None:
    """`make lock` moving aiortc/aioice fails here until each patch is read again."""
    pins = dict(re.findall(r"^(aiortc|aioice)==(\S+)$",
                           (ROOT / "requirements.lock").read_text(), re.M))
    for library, checked in _module(name).CHECKED.items():
        assert pins[library] in checked, f"{name}: checked against {checked}, pinned {pins}"
        assert versions.installed(library) in checked


@pytest.mark.parametrize("name", PATCHES)
def test_another_version_leaves_the_library_alone(
    name: str, restored: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    module = _module(name)
    owner, attr, original_name, apply = TARGETS[name]
    original = getattr(module, original_name)
    apply(module)
    if name != "aiortc_dtls" or module.supported():
        assert _current(owner, attr) is not original  # on the checked version it applies
    _put_back(owner, attr, original)  # as a new process starts
    monkeypatch.setattr(versions, "installed", lambda library: "99.0.0")
    monkeypatch.setattr(versions, "_refused", set())
    with caplog.at_level(logging.ERROR, logger=versions.__name__):
        apply(module)
        apply(module)
    assert _current(owner, attr) is original
    (line,) = [r.getMessage() for r in caplog.records if r.name == versions.__name__]  # once
    library = name.split("_")[0]
    assert line.startswith(f"not applying the {name} patch: it was checked against {library} ")
    assert f"this is {library} 99.0.0" in line
