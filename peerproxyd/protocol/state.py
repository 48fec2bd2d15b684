"""The state of one direction of a stream. Every legal transition is in TRANSITIONS."""

from __future__ import annotations

import enum


class HalfState(enum.Enum):
    IDLE = "idle"  # nothing sent/received yet
    HEADERS = "headers"  # inside a header block that continues
    BODY = "body"  # header block complete; body messages may follow
    CLOSED = "closed"  # FINAL seen: nothing more in this direction


class Input(enum.Enum):
    HEADERS = "HEADERS"  # a header fragment without END_HEADERS
    END_HEADERS = "END_HEADERS"
    BODY = "BODY"
    FINAL = "FINAL"  # applied after the message's own input


TRANSITIONS: dict[tuple[HalfState, Input], HalfState] = {
    (HalfState.IDLE, Input.HEADERS): HalfState.HEADERS,
    (HalfState.IDLE, Input.END_HEADERS): HalfState.BODY,
    (HalfState.HEADERS, Input.HEADERS): HalfState.HEADERS,
    (HalfState.HEADERS, Input.END_HEADERS): HalfState.BODY,
    (HalfState.BODY, Input.BODY): HalfState.BODY,
    (HalfState.BODY, Input.FINAL): HalfState.CLOSED,
}


def next_state(state: HalfState, event: Input) -> HalfState | None:
    """The state after `event`, or None if the protocol does not allow it."""
    return TRANSITIONS.get((state, event))
