"""Resolving browsers' `.local` ICE candidates with aioice 0.13: two fixes.

1. Read only the message sections needed. aioice parses every mDNS datagram whole with
`dns.message.from_wire`. Chromium's answer to a `<uuid>.local` query (and zeroconf's, and
Apple's) carries an NSEC record in the additional section whose "next domain name" is
compressed; dnspython refuses compression there (`DecompressionForbidden`, a `FormError`),
aioice drops the whole datagram, and every `.local` candidate a browser sends costs aioice its
1 s resolve timeout (../shared/chromium-webrtc.md: set-up 1.2 s instead of 245 ms). A
resolver needs only the answer section of a response, and a responder only the question
section of a query, so this protocol parses just those, and skips any record's data it has no
use for by its length, without decoding it.

2. Do not wait for the answer. `Connection.add_remote_candidate()` awaits the mDNS query, and
aiortc's `setRemoteDescription()` awaits every candidate before ICE starts; so a `.local` name
nobody answers (a viewer on another network than the device) holds the whole connection set-up
for aioice's 1 s timeout. Browsers resolve in the background; we run the same coroutine in a
task instead. aioice already counts the names it is resolving and keeps end-of-candidates
pending until they are done, so checks on the other pairs start at once and the `.local` pair
joins when (if) its address arrives.

`install()` makes aioice create our protocol instead of its own (aioice looks the factory up
in `aioice.mdns` at call time) and wraps `Connection.add_remote_candidate`. Everything else
(`resolve`, `publish`, the shared socket and its reference counting in `aioice.ice`) stays
aioice's. Regression tests: tests/appliance/test_mdns.py (a Chromium-style response with a
compressed NSEC name; an unanswered name that must not delay the other candidates).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass
from typing import Any, cast

import aioice.ice
import aioice.mdns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from peerproxyd.rtc.patches import versions

CHECKED = {"aioice": ("0.13.0",)}
"""The aioice versions this patch was read against (versions.py)."""

_ORIGINAL_FACTORY = aioice.mdns.create_mdns_protocol
_ORIGINAL_ADD_REMOTE_CANDIDATE = aioice.ice.Connection.add_remote_candidate

TYPE_A = 1
TYPE_AAAA = 28
TYPE_ANY = 255
CLASS_IN = 1
_HEADER = struct.Struct("!HHHHHH")
_RECORD = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_QUESTION = struct.Struct("!HH")  # type, class
_FLAG_QR = 0x8000


class MalformedMessage(ValueError):
    """An mDNS datagram too short or inconsistent to read the sections we need."""


@dataclass(frozen=True, slots=True)
class Question:
    name: dns.name.Name
    rdtype: int


@dataclass(frozen=True, slots=True)
class Address:
    """An A or AAAA record from an answer section."""

    name: dns.name.Name
    address: str


@dataclass(frozen=True, slots=True)
class Sections:
    is_response: bool
    questions: tuple[Question, ...]
    addresses: tuple[Address, ...]


def parse_sections(data: bytes) -> Sections:
    """The question section and the A/AAAA records of the answer section of `data`.

    The authority and additional sections are never read, and the data of any other answer
    record is skipped by its length. Names may be compressed anywhere (RFC 1035 4.1.4)."""
    if len(data) < _HEADER.size:
        raise MalformedMessage(f"mDNS message length is less than {_HEADER.size} bytes")
    _id, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(data)
    offset = _HEADER.size
    questions = []
    for _ in range(qdcount):
        name, offset = _read_name(data, offset)
        rdtype, _rdclass = _unpack(_QUESTION, data, offset)
        offset += _QUESTION.size
        questions.append(Question(name, rdtype))
    addresses = []
    for _ in range(ancount):
        name, offset = _read_name(data, offset)
        rdtype, rdclass, _ttl, rdlength = _unpack(_RECORD, data, offset)
        offset += _RECORD.size
        rdata = data[offset : offset + rdlength]
        if len(rdata) != rdlength:
            raise MalformedMessage("mDNS record data runs past the end of the message")
        offset += rdlength
        # The top bit of the class is mDNS's cache-flush flag (RFC 6762 10.2).
        if rdclass & 0x7FFF != CLASS_IN:
            continue
        if rdtype == TYPE_A and rdlength == 4:
            addresses.append(Address(name, socket.inet_ntop(socket.AF_INET, rdata)))
        elif rdtype == TYPE_AAAA and rdlength == 16:
            addresses.append(Address(name, socket.inet_ntop(socket.AF_INET6, rdata)))
    return Sections(bool(flags & _FLAG_QR), tuple(questions), tuple(addresses))


def _read_name(data: bytes, offset: int) -> tuple[dns.name.Name, int]:
    try:
        name, used = dns.name.from_wire(data, offset)
    except (dns.exception.DNSException, IndexError) as exc:
        raise MalformedMessage(f"bad name at offset {offset}: {exc!r}") from None
    return name, offset + used


def _unpack(fmt: struct.Struct, data: bytes, offset: int) -> tuple[int, ...]:
    if offset + fmt.size > len(data):
        raise MalformedMessage("mDNS message ends inside a record")
    return fmt.unpack_from(data, offset)


class SectionMDnsProtocol(aioice.mdns.MDnsProtocol):
    """aioice's MDnsProtocol whose datagrams are read by `parse_sections`."""

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        try:
            message = parse_sections(cast(bytes, data))
        except MalformedMessage:
            return
        if message.is_response:
            self._resolve_queries(message.addresses)
        elif message.questions:
            self._answer(message.questions)

    def _resolve_queries(self, addresses: tuple[Address, ...]) -> None:
        for record in addresses:
            # A cancelled resolve() stays listed until its task resumes: skip done futures.
            for future in self.queries.pop(record.name, set()):
                if not future.done():
                    future.set_result(record.address)

    def _answer(self, questions: tuple[Question, ...]) -> None:
        """Answer A/AAAA/ANY questions for the names published with `publish()`."""
        response = dns.message.Message(id=0)
        response.flags |= dns.flags.QR | dns.flags.AA
        for question in questions:
            if question.rdtype not in (TYPE_A, TYPE_AAAA, TYPE_ANY):
                continue
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                try:
                    rrset = self.zone.find_rrset(question.name, rdtype)
                except KeyError:
                    continue
                if rrset not in response.answer:
                    response.answer.append(rrset)
        if response.answer:
            self.transport.sendto(
                response.to_wire(), (aioice.mdns.MDNS_ADDRESS, aioice.mdns.MDNS_PORT)
            )


async def create_mdns_protocol() -> aioice.mdns.MDnsProtocol:
    """aioice's socket set-up (a wildcard-bound, reusable port 5353), with our protocol."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("", aioice.mdns.MDNS_PORT))
    _, protocol = await loop.create_datagram_endpoint(SectionMDnsProtocol, sock=sock)
    return protocol


# Resolutions still running; a task must be referenced until it is done.
_resolving: set[asyncio.Task[None]] = set()


async def add_remote_candidate(
    self: aioice.ice.Connection, remote_candidate: aioice.Candidate | None
) -> None:
    """aioice's add_remote_candidate, returning before a `.local` name is resolved."""
    if remote_candidate is None or not aioice.mdns.is_mdns_hostname(remote_candidate.host):
        await _ORIGINAL_ADD_REMOTE_CANDIDATE(self, remote_candidate)
        return
    task = asyncio.get_running_loop().create_task(
        _ORIGINAL_ADD_REMOTE_CANDIDATE(self, remote_candidate)
    )
    _resolving.add(task)
    task.add_done_callback(_resolving.discard)
    # One turn of the loop runs the task up to its first await, by which time aioice has
    # counted the name as resolving: an end-of-candidates added next then waits for it.
    await asyncio.sleep(0)


def install(enabled: bool = True) -> None:
    """Apply both fixes to aioice (or undo them with `enabled=False`)."""
    enabled = enabled and versions.applies(__name__, CHECKED)
    aioice.mdns.create_mdns_protocol = create_mdns_protocol if enabled else _ORIGINAL_FACTORY
    aioice.ice.Connection.add_remote_candidate = (  # type: ignore[method-assign]
        add_remote_candidate if enabled else _ORIGINAL_ADD_REMOTE_CANDIDATE
    )
