"""Responses peerproxyd makes itself (404, 403, 413, 502, 503...): short text/plain bodies
marked `X-Peerproxy-Error: 1`, so a viewer can tell them from the upstream's own."""

from __future__ import annotations

from peerproxyd.errors import PeerGoneError, StreamResetError
from peerproxyd.protocol import ErrorCode, ResponseHead
from peerproxyd.tunnel.channel import ChannelStream

MAX_TEXT = 300
"""Longer texts (e.g. a parser error quoting an upstream's garbage) are cut to this."""


async def reply(
    stream: ChannelStream, status: int, text: str, *, headers: tuple[tuple[str, str], ...] = ()
) -> int:
    """Send `status` with `text` as the whole response; returns `status`.

    Raises StreamResetError/PeerGoneError if the viewer is gone (see `reply_quietly`)."""
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 3] + "..."
    body = (text + "\n").encode()
    stream.send_response(
        ResponseHead(
            status=status,
            headers=(
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                *headers,
                ("X-Peerproxy-Error", "1"),
            ),
        )
    )
    await stream.write(body, end=True)
    return status


async def reply_quietly(
    stream: ChannelStream, status: int, text: str, *, headers: tuple[tuple[str, str], ...] = ()
) -> None:
    """`reply`, for a request that is refused before anything is forwarded: a viewer that is
    gone is no error, and a request body still arriving is turned away (NO_ERROR reset)."""
    try:
        await reply(stream, status, text, headers=headers)
    except (StreamResetError, PeerGoneError):
        pass
    finally:
        if stream.is_open:
            stream.reset(ErrorCode.NO_ERROR, "response complete")
