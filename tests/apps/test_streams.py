"""Streams other than the camera through the browser client, in real headless Chromium: an
`EventSource` (Server-Sent Events) that the server closes and the browser resumes with
`Last-Event-ID`, and a `<video>` that plays an MP4 and seeks in it with range requests.

The upstream is tests/apps/streams.py's media app (aiohttp: its static files are aiohttp's own,
with real Range support) in a BrowserWorld's namespace as service "media"; the MP4s are made
by Debian's ffmpeg (tests/apps/setup_ffmpeg.sh). What the upstream saw comes from the daemon's
access log (status per request) and the app's own log (each request's Range and Last-Event-ID).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator

import pytest

from tests.browser.harness import BrowserWorld, unavailable_reason
from tests.support.procs import ROOT

pytestmark = pytest.mark.netns
MEDIA = ROOT / ".apps" / "ffmpeg"
CLIPS = ("clip-faststart.mp4", "clip-moov-end.mp4")
MEDIA_PORT = 9200
SERVICE = "media"
EVENT_SOURCE_CONNECTING = 0  # EventSource.CONNECTING: retrying


def start_media(world: BrowserWorld) -> None:
    proc = world.start("media", "-m", "tests.apps.streams", "media", "--port", str(MEDIA_PORT),
                       "--media", str(MEDIA))
    proc.wait_for_log("media app listening", count=proc.log().count("media app listening") or 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserWorld]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    missing = [name for name in CLIPS if not (MEDIA / name).is_file()]
    assert not missing, f"{missing} missing in {MEDIA}: run tests/apps/setup_ffmpeg.sh"
    w = BrowserWorld(tmp_path_factory.mktemp("streams"), services={SERVICE: MEDIA_PORT},
                     test_app=False)
    try:
        w.up()
        start_media(w)
        yield w
    finally:
        w.down()


def access(world: BrowserWorld, path_prefix: str) -> list[tuple[str, int, int]]:
    """(target, status, bytes) of the daemon's access-log lines for `path_prefix`, in order."""
    return [(target, int(status), int(size)) for target, status, size in re.findall(
        rf"peerproxyd\.access: {SERVICE} GET ({re.escape(path_prefix)}\S*) (\d+) (\d+)B",
        world.procs["daemon"].log())]


def test_event_source_resumes_with_last_event_id(world: BrowserWorld) -> None:
    world.open("/", service=SERVICE)
    app = world.agent.app
    app.evaluate(
        """() => {
            window.got = []; window.opens = 0; window.errors = 0;
            window.es = new EventSource('/events');
            es.addEventListener('tick', (e) => got.push([e.lastEventId, e.data]));
            es.onopen = () => { opens += 1; };
            es.onerror = () => { errors += 1; };
        }"""
    )
    # Three connections: 1-5 (closed by the server), 6-10 (closed), then 204: the browser
    # stops (readyState CLOSED).
    app.wait_for_function("() => window.es.readyState === EventSource.CLOSED", timeout=60_000)
    got = app.evaluate("() => window.got")
    assert got == [[str(n), f"event {n}"] for n in range(1, 11)], got
    assert app.evaluate("() => window.opens") == 2
    # The server saw the reconnections carry the last id the page had received.
    seen = re.findall(r"^SSE connect last-event-id=(\S+)$", world.procs["media"].log(), re.M)
    assert seen == ["-", "5", "10"], seen
    statuses = [status for _, status, _ in access(world, "/events")]
    assert statuses == [200, 200, 204], statuses


def test_closing_an_event_source_ends_the_upstream_stream(world: BrowserWorld) -> None:
    world.open("/", service=SERVICE)
    app = world.agent.app
    gone = r"SSE gone after \d+"
    before = len(re.findall(gone, world.procs["media"].log()))
    app.evaluate("""() => { window.ticks = 0; window.es = new EventSource('/events?endless');
                            es.onmessage = () => { ticks += 1; }; }""")
    app.wait_for_function("() => window.ticks >= 5", timeout=30_000)
    closed = time.monotonic()
    app.evaluate("() => window.es.close()")
    world.procs["media"].wait_for_log(gone, count=before + 1, timeout=10)
    took = time.monotonic() - closed
    print(f"es.close(): the upstream stream ended after {took:.3f} s")
    assert took <= 1.5  # the app notices at its next write (0.2 s), the log read adds ~0.1 s
    world.procs["daemon"].wait_for_log(rf"access: {SERVICE} GET /events\?endless 499 ", timeout=5)


def test_event_source_survives_a_restart_of_the_server(world: BrowserWorld) -> None:
    """The app's server dies mid-stream and comes back: the EventSource retries meanwhile and
    resumes after the last event it got, as it does without the tunnel."""
    world.open("/", service=SERVICE)
    app = world.agent.app
    app.evaluate("""() => { window.got = []; window.states = [];
                            window.es = new EventSource('/events?endless');
                            es.onmessage = (e) => got.push(e.lastEventId);
                            es.onerror = () => states.push(es.readyState); }""")
    app.wait_for_function("() => window.got.length >= 5", timeout=30_000)
    world.procs["media"].stop(signal.SIGKILL)
    time.sleep(2)  # retries meanwhile find no server (the daemon answers 502)
    had = len(app.evaluate("window.got"))
    start_media(world)
    app.wait_for_function("n => window.got.length >= n + 5", arg=had, timeout=30_000)
    app.evaluate("() => window.es.close()")
    got = app.evaluate("window.got")
    assert got == [str(n) for n in range(1, len(got) + 1)], got  # no gap, no repeat
    states = app.evaluate("window.states")
    assert states and set(states) == {EVENT_SOURCE_CONNECTING}, states  # never closed
    resumed = re.findall(r"SSE connect last-event-id=(\S+)", world.procs["media"].log())
    assert resumed[-1] == str(had), resumed
    assert "media GET /events?endless 502 " in world.procs["daemon"].log()


def test_fetched_event_stream_with_the_apps_last_event_id(world: BrowserWorld) -> None:
    """Event-stream polyfills read the stream with fetch and set Last-Event-ID themselves."""
    world.open("/", service=SERVICE)
    app = world.agent.app
    text = app.evaluate(
        """async () => {
            const r = await fetch('/events', {headers: {'Last-Event-ID': '7'}});
            return [r.status, r.headers.get('content-type'), await r.text()];
        }"""
    )
    assert text[0] == 200 and text[1] == "text/event-stream"
    assert re.findall(r"^id: (\d+)$", text[2], re.M) == ["8", "9", "10"]
    assert re.findall(r"^SSE connect last-event-id=(\S+)$",
                      world.procs["media"].log(), re.M)[-1] == "7"


@pytest.mark.parametrize("clip", CLIPS)
def test_video_plays_and_seeks_with_range_requests(world: BrowserWorld, clip: str) -> None:
    world.open(f"/video.html?src=/media/{clip}", service=SERVICE)
    app = world.agent.app
    assert app.evaluate("() => document.getElementById('v').canPlayType('video/mp4; "
                        "codecs=\"avc1.42E01E\"')") in ("probably", "maybe")
    app.wait_for_function("() => document.getElementById('v').readyState >= 1", timeout=60_000)
    duration = app.evaluate("() => document.getElementById('v').duration")
    assert 29.5 <= duration <= 30.5, duration
    app.evaluate("() => document.getElementById('v').play()")
    app.wait_for_function("() => document.getElementById('v').currentTime > 1", timeout=60_000)
    size = (MEDIA / clip).stat().st_size
    before = len(range_requests(world, clip))
    app.evaluate("() => { document.getElementById('v').currentTime = 20; }")
    app.wait_for_function(
        "() => { const v = document.getElementById('v');"
        " return !v.seeking && v.currentTime >= 20; }", timeout=60_000)
    # It plays on from there.
    app.wait_for_function("() => document.getElementById('v').currentTime > 21", timeout=60_000)
    assert app.evaluate("() => document.getElementById('v').error") is None
    ranges = range_requests(world, clip)
    print(f"{clip} ({size} bytes): upstream {ranges}, {before} before the seek")
    # Every request of the player was a range request and the upstream answered 206 ...
    assert ranges and all(status == 206 for status, _ in ranges), ranges
    # The player began at the start (the access log is in order of completion: with the
    # index at the end, the read from 0 may end after the jump to the index).
    assert (206, "bytes=0-") in ranges, ranges
    # ... and the seek to 2/3 of the clip fetched from the second half on.
    starts = [int(value.removeprefix("bytes=").split("-")[0]) for _, value in ranges[before:]]
    assert any(size // 2 <= start < size for start in starts), ranges
    # All of them went through the tunnel: the daemon logs each when it ends (499 where the
    # player dropped the rest of a response it no longer needed). Closing the view ends the
    # one still streaming.
    world.agent.new_page()
    world.procs["daemon"].wait_for_log(rf"access: {SERVICE} GET /media/{re.escape(clip)} ",
                                       count=len(ranges))
    served = access(world, f"/media/{clip}")
    assert len(served) == len(ranges), (served, ranges)


def range_requests(world: BrowserWorld, clip: str) -> list[tuple[int, str]]:
    """(status, Range header) of the media app's requests for `clip` (its access log)."""
    return [(int(status), value) for status, value in re.findall(
        rf"GET /media/{re.escape(clip)} HTTP/1.1 (\d+) \d+ range=(\S*)",
        world.procs["media"].log())]
