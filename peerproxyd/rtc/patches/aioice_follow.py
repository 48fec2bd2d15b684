"""The controlled side follows a later nomination: the pair whose check ICE left unfinished
can still be checked, and selected when the controlling agent nominates it.

Why: aioice 0.13, when `connect()` completes, cancels every check still under way, and leaves
those pairs as they were: In-Progress (or Waiting) with the cancelled task in `pair.task`.
`check_incoming` then never starts a triggered check for them (`check_start_task` does
nothing while `pair.task` is set), so when the controlling agent later nominates one of them
(USE-CANDIDATE), aioice only notes `remote_nominated` and keeps sending on the first pair
for good. RFC 8445 sections 7.3.1.4 and 7.3.1.5 want a triggered check, and the pair nominated
once it succeeds. It happens behind a cone NAT: Chromium (controlling) starts on a relayed pair
because the NAT dropped its first direct check, and about a second later switches to the
direct pair and nominates it (its checks on the selected pair carry USE-CANDIDATE); our end's
own check of that pair, still retransmitting, was the one cancelled, and the daemon sent
every response through the TURN server (tests/test_nat_browser.py: one run in 5 to 10).

Stock aioice already follows a later USE-CANDIDATE on a pair that has succeeded (its
`check_incoming` makes it the nominated pair): only the pair with the dead check is stuck.
So, on the controlled side only, an incoming check on a pair whose check task is finished
without the check having completed (cancelled) clears the task and sets the pair Waiting
again, and aioice's own `check_incoming` then does the rest: the triggered check, and the
nomination once it succeeds. The signal is the nomination, not application data: data
arrives on whatever pair the peer happens to send on; which pair we send on is the
controlling agent's choice.

`install()` wraps `aioice.ice.Connection.check_incoming`.
Regression test: tests/rtc/patches/test_aioice_follow.py.
"""

from __future__ import annotations

import aioice.ice
from aioice import stun
from aioice.ice import CandidatePair, Connection, StunProtocol

from peerproxyd.rtc.patches import versions

CHECKED = {"aioice": ("0.13.0",)}
"""The aioice versions this patch was read against (versions.py)."""

_ORIGINAL_CHECK_INCOMING = aioice.ice.Connection.check_incoming


def dead_check(connection: Connection, addr: tuple[str, int],
               protocol: StunProtocol) -> CandidatePair | None:
    """The pair `addr` -> `protocol` if its check task ended without completing it."""
    for candidate in connection._remote_candidates:
        if (candidate._network_host, candidate.port) == (addr[0], addr[1]):
            pair = connection._find_pair(protocol, candidate)
            if pair is not None and pair.task is not None and pair.task.done():
                return pair
            return None
    return None


def check_incoming(self: Connection, message: stun.Message, addr: tuple[str, int],
                   protocol: StunProtocol) -> None:
    """aioice's check_incoming, after reviving a pair whose check connect() cancelled."""
    if not self.ice_controlling:
        pair = dead_check(self, addr, protocol)
        if pair is not None:
            pair.task = None
            if pair.state == CandidatePair.State.IN_PROGRESS:
                self.check_state(pair, CandidatePair.State.WAITING)
    _ORIGINAL_CHECK_INCOMING(self, message, addr, protocol)


def install(enabled: bool = True) -> None:
    """Wrap aioice's check_incoming (or restore it with `enabled=False`)."""
    enabled = enabled and versions.applies(__name__, CHECKED)
    aioice.ice.Connection.check_incoming = (  # type: ignore[method-assign]
        check_incoming if enabled else _ORIGINAL_CHECK_INCOMING
    )
