"""A small multi-page web app for the browser tests, run behind the daemon as service "camera".

Pages with CSS, JS and an image; a JSON API; a form with a 303 redirect; a multipart upload
hashed as it streams in; a deterministic download; a cookie-session login; a page that looks for
the viewer's secret in the page that frames it (/peek); an area behind HTTP Basic auth (/basic/,
each answer logged as a `BASIC` line); files with an ETag (/versioned/, each GET logged as a
`VERSIONED` line). What it received (upload hashes, logins) is printed as `STATE {json}` lines,
and every request as a `REQUEST METHOD /path` line, for the tests to read from its log.

Run: python -m tests.browser.app --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import html
import json
import secrets
import struct
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from tests.support.upstream_app import CHUNK, pattern

STATE = web.AppKey("state", dict)
SESSIONS = web.AppKey("sessions", dict)
FLAKY = web.AppKey("flaky", dict)  # /events/flaky: connections so far, per key
VERSIONS = web.AppKey("versions", dict)  # /versioned/{name}: its current version
STATIC = Path(__file__).parent / "static"
LOGO_RGB = (20, 120, 220)
USERS = {"alice": "wonderland"}
BASIC_USER, BASIC_PASSWORD = "ann", "grüße 42"  # not ASCII: the header is UTF-8 (RFC 7617)
BASIC_REALM = "Camera admin"


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, written by hand (no image library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def page(title: str, body: str, *, head: str = "") -> web.Response:
    return web.Response(
        text=f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><link rel="stylesheet" href="/static/style.css">{head}</head>
<body>{body}</body></html>""",
        content_type="text/html",
    )


def record(app: web.Application, **changes: object) -> None:
    app[STATE].update(changes)
    print("STATE " + json.dumps(app[STATE]), flush=True)


@web.middleware
async def log_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    print(f"REQUEST {request.method} {request.path_qs}", flush=True)
    return await handler(request)


@web.middleware
async def same_origin_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """What Jupyter, Grafana and code-server do against cross-site use: a WebSocket or an
    unsafe method whose Origin is not the Host it was sent to is refused (403)."""
    origin = request.headers.get("Origin")
    unsafe = request.method not in ("GET", "HEAD") or request.headers.get("Upgrade")
    if origin and unsafe and urlsplit(origin).netloc != request.host:
        print(f"BLOCKED Origin: {origin}, Host: {request.host}", flush=True)
        raise web.HTTPForbidden(text=f"Blocking Cross Origin request. Origin: {origin}, "
                                     f"Host: {request.host}")
    return await handler(request)


async def peek(request: web.Request) -> web.Response:
    return page(
        "Peek",
        '<h1 id="title">Peek</h1><pre id="seen"></pre>',
        head='<script src="/static/peek.js" defer></script>',
    )


async def index(request: web.Request) -> web.Response:
    return page(
        "Test app home",
        """<h1 id="title">Test app</h1>
<p id="js-status">script has not run</p>
<img id="logo" src="/static/logo.png" width="64" height="64" alt="logo">
<nav><a id="to-page2" href="/page2">Page 2</a> · <a id="to-upload" href="/upload">Upload</a>
 · <a id="to-private" href="/private">Private</a></nav>""",
        head='<script src="/static/app.js" defer></script>',
    )


async def page2(request: web.Request) -> web.Response:
    query = html.escape(request.query_string)
    return page(
        "Page 2",
        f"""<h1 id="title">Page 2</h1><p id="query">{query}</p>
<a id="home" href="/">Home</a>
<form id="word-form" method="post" action="/form">
<input id="word" name="word" value="hello"><button id="send">Send</button></form>""",
    )


async def form(request: web.Request) -> web.Response:
    data = await request.post()
    word = str(data.get("word", ""))
    raise web.HTTPSeeOther(f"/done?word={word}")


async def done(request: web.Request) -> web.Response:
    word = html.escape(request.query.get("word", ""))
    return page("Done", f'<h1 id="done">Done: {word}</h1><a id="home" href="/">Home</a>')


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name == "logo.png":
        return web.Response(body=png(64, 64, LOGO_RGB), content_type="image/png")
    path = STATIC / name
    if not path.is_file():
        raise web.HTTPNotFound()
    types = {".css": "text/css", ".js": "text/javascript"}
    response = web.Response(body=path.read_bytes(), content_type=types.get(path.suffix, "text/plain"))
    response.enable_compression()  # gzip when the client accepts it: the worker decodes
    return response


async def versioned(request: web.Request) -> web.Response:
    """A file with a validator (ETag), as apps serve theirs: `?max_age=N` adds Cache-Control
    max-age, a matching If-None-Match gets a 304, and a POST makes a new version. Each GET is
    logged as `VERSIONED name if-none-match status`."""
    name = request.match_info["name"]
    versions = request.app[VERSIONS]
    if request.method == "POST":
        versions[name] = versions.get(name, 1) + 1
        return web.Response(status=204)
    etag = f'"{name}-{versions.setdefault(name, 1)}"'
    headers = {"ETag": etag}
    if "max_age" in request.query:
        headers["Cache-Control"] = f"max-age={int(request.query['max_age'])}"
    sent = request.headers.get("If-None-Match")
    status = 304 if sent == etag else 200
    print(f"VERSIONED {name} {sent or '-'} {status}", flush=True)
    if status == 304:
        return web.Response(status=304, headers=headers)
    body = f"{name} version {versions[name]}\n".encode() + pattern(100_000)
    return web.Response(body=body, headers=headers, content_type="application/octet-stream")


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = body.decode(errors="replace")
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "json": parsed,
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
    )


async def sink(request: web.Request) -> web.Response:
    """Any body, hashed as it streams in: {"sha256", "size"}."""
    digest, size = hashlib.sha256(), 0
    while chunk := await request.content.readany():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "size": size})


async def upload_form(request: web.Request) -> web.Response:
    return page(
        "Upload",
        """<h1 id="title">Upload</h1>
<form id="upload-form" method="post" action="/upload" enctype="multipart/form-data">
<input id="file" type="file" name="file"><input name="note" value="ten megabytes">
<button id="submit">Upload</button></form>""",
    )


async def upload(request: web.Request) -> web.Response:
    reader = await request.multipart()
    digest, size, note, filename = hashlib.sha256(), 0, "", ""
    async for part in reader:
        if part.name == "file":
            filename = part.filename or ""
            while chunk := await part.read_chunk(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        elif part.name == "note":
            note = await part.text()
    sha = digest.hexdigest()
    record(request.app, upload={"sha256": sha, "size": size, "note": note, "filename": filename})
    return page(
        "Uploaded",
        f'<h1 id="title">Uploaded</h1><p id="sha">{sha}</p><p id="size">{size}</p>'
        f'<p id="note">{html.escape(note)}</p>',
    )


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", "0"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    block = pattern(CHUNK)
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        await response.write(block[:n])
        sent += n
    await response.write_eof()
    return response


async def downloads(request: web.Request) -> web.Response:
    """Download links as apps make them: a plain `<a download>`, one whose name comes from
    Content-Disposition, one Home Assistant's way (a non-bubbling synthetic click on an
    appended anchor), one never attached (`a.click()`), and one to a missing file."""
    script = """
        function fileDownload(href, name) {
          const a = document.createElement('a');
          a.href = href; a.download = name; a.style.display = 'none';
          document.body.appendChild(a);
          a.dispatchEvent(new MouseEvent('click'));
          document.body.removeChild(a);
        }
        function detached(href, name) {
          const a = document.createElement('a');
          a.href = href; a.download = name; a.click();
        }"""
    return page(
        "Downloads",
        '<a id="plain" href="/download?size=300000" download="data.bin">data.bin</a>'
        '<a id="named" href="/attachment" download>report</a>'
        '<button id="ha" onclick="fileDownload(\'/download?size=70000\', \'ha.bin\')">HA</button>'
        '<button id="detached" onclick="detached(\'/download?size=1000\', \'d.bin\')">d</button>'
        '<a id="missing" href="/no-such-file.bin" download>missing</a>',
        head=f"<script>{script}</script>",
    )


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events 1-3 then the server closes the stream; a reconnection resumes after
    its Last-Event-ID (up to 6, closed again); from 6 on: 204 (the EventSource stops)."""
    last = request.headers.get("Last-Event-ID", "")
    print(f"EVENTS last-event-id={last or '-'}", flush=True)
    start = int(last) + 1 if last.isdigit() else 1
    if start > 6:
        return web.Response(status=204)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"retry: 100\n\n")
    for n in range(start, 4 if start <= 3 else 7):
        await response.write(f"id: {n}\ndata: event {n}\n\n".encode())
    await response.write_eof()
    return response


async def flaky_events(request: web.Request) -> web.StreamResponse:
    """An event stream with outages, per `?key=`: the 1st connection sends events 1-2 and
    breaks (connection reset); the 2nd answers nothing for 6 s (the daemon's read_timeout in
    the tests is 5 s: it answers 504); the 3rd resumes after its Last-Event-ID up to 4 and
    ends; later ones get 204 (the EventSource stops)."""
    counts = request.app[FLAKY]
    key = request.query.get("key", "")
    counts[key] = attempt = counts.get(key, 0) + 1
    last = request.headers.get("Last-Event-ID", "")
    print(f"FLAKY {attempt} last-event-id={last or '-'}", flush=True)
    if attempt == 2:
        await asyncio.sleep(6)
    if attempt >= 4 or attempt == 2:
        return web.Response(status=204)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"retry: 100\n\n")
    start = int(last) + 1 if last.isdigit() else 1
    for n in range(start, 3 if attempt == 1 else 5):
        await response.write(f"id: {n}\ndata: event {n}\n\n".encode())
    if attempt == 1:
        await asyncio.sleep(0.2)
        assert request.transport is not None
        request.transport.abort()  # the app's connection breaks mid-stream
        return response
    await response.write_eof()
    return response


async def attachment(request: web.Request) -> web.Response:
    return web.Response(
        body=b"a,b\n1,2\n", content_type="text/csv",
        headers={"Content-Disposition": "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.csv"},
    )


async def endless(request: web.Request) -> web.StreamResponse:
    """An HTML document that keeps loading (a live view): its `load` event never fires."""
    response = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
    await response.prepare(request)
    await response.write(b'<!doctype html><title>Live</title><h1 id="title">Live</h1>')
    for i in range(120):  # bounded: two minutes, then the document completes
        await asyncio.sleep(1)
        await response.write(f"<!-- {i} -->".encode())
    await response.write_eof()
    return response


# ----- WebSockets


async def chat(request: web.Request) -> web.Response:
    """A page whose own script opens a WebSocket to its origin, as Home Assistant's does (an
    absolute ws: URL built from location), under a nonce-based CSP."""
    response = page(
        "Chat",
        """<h1 id="title">Chat</h1><p id="log"></p>
<script nonce="n0nce">
const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/echo`);
ws.binaryType = "arraybuffer";
const got = [];
ws.onopen = () => { ws.send("hello from the page"); ws.send(new Uint8Array([1, 2, 3])); };
ws.onmessage = (e) => {
  got.push(typeof e.data === "string" ? e.data : new Uint8Array(e.data).join(","));
  document.getElementById("log").textContent = got.join("|");
};
</script>""",
    )
    response.headers["Content-Security-Policy"] = "script-src 'nonce-n0nce' 'strict-dynamic'"
    return response


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    """Echoes text and binary. Text commands: `close <code> <reason>` closes with that,
    `drop` ends the TCP connection without a close frame. Each close it receives is recorded
    (STATE ws_closes)."""
    ws = web.WebSocketResponse(protocols=("chat",), max_msg_size=32 * 1024**2)
    await ws.prepare(request)
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT and msg.data.startswith("close "):
            code, _, reason = msg.data[6:].partition(" ")
            await ws.close(code=int(code), message=reason.encode())
        elif msg.type is WSMsgType.TEXT and msg.data == "drop":
            assert request.transport is not None
            request.transport.abort()
        elif msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        else:
            if msg.type is WSMsgType.CLOSE:
                closes = request.app[STATE].get("ws_closes", [])
                record(request.app, ws_closes=[*closes, [msg.data, msg.extra]])
            break
    return ws


# ----- a cookie-session login


def _user(request: web.Request) -> str | None:
    return request.app[SESSIONS].get(request.cookies.get("session", ""))


async def login_form(request: web.Request) -> web.Response:
    error = '<p id="error">wrong password</p>' if request.query.get("failed") else ""
    return page(
        "Log in",
        f"""<h1 id="title">Log in</h1>{error}
<form id="login-form" method="post" action="/login">
<input id="user" name="user"><input id="password" name="password" type="password">
<button id="login">Log in</button></form>""",
    )


async def login(request: web.Request) -> web.Response:
    data = await request.post()
    user, password = str(data.get("user", "")), str(data.get("password", ""))
    if USERS.get(user) != password:
        raise web.HTTPSeeOther("/login?failed=1")
    token = secrets.token_hex(16)
    request.app[SESSIONS][token] = user
    record(request.app, logins=request.app[STATE].get("logins", 0) + 1)
    response = web.HTTPSeeOther("/private")
    response.set_cookie("session", token, path="/", httponly=True, samesite="Lax")
    response.set_cookie("theme", "dark", path="/", max_age=3600)
    response.set_cookie("scoped", "api-only", path="/api")
    return response


async def private(request: web.Request) -> web.Response:
    user = _user(request)
    if user is None:
        raise web.HTTPSeeOther("/login")
    return page(
        "Private",
        f"""<h1 id="title">Private</h1><p id="welcome">Welcome {html.escape(user)}</p>
<p id="cookies"></p><a id="logout" href="/logout">Log out</a>
<script>document.getElementById("cookies").textContent = document.cookie;</script>""",
    )


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"user": _user(request), "cookie": request.headers.get("Cookie", "")})


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].pop(request.cookies.get("session", ""), None)
    response = web.HTTPSeeOther("/login")
    response.del_cookie("session", path="/")
    return response


# ----- HTTP Basic auth (as nginx auth_basic, Transmission, Syncthing <= 1.2x do it)


def _basic_user(request: web.Request) -> str | None:
    """The user whose right credentials the request carries, else None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except ValueError:
        return None
    return user if (user, password) == (BASIC_USER, BASIC_PASSWORD) else None


@web.middleware
async def basic_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Everything under /basic/ needs the Basic credentials; a `BASIC <status> METHOD path`
    line tells the tests what each request carried. /digest answers with another scheme."""
    if request.path == "/digest":
        return web.Response(status=401, text="digest only",
                            headers={"WWW-Authenticate": 'Digest realm="d", nonce="abc", qop="auth"'})
    if not request.path.startswith("/basic/"):
        return await handler(request)
    if _basic_user(request) is None:
        await request.read()
        print(f"BASIC 401 {request.method} {request.path_qs}", flush=True)
        return web.Response(
            status=401, content_type="text/html",
            text='<!doctype html><title>401</title><h1 id="denied">Not Authorized</h1>',
            headers={"WWW-Authenticate": f'Basic realm="{BASIC_REALM}", charset="UTF-8"'},
        )
    print(f"BASIC 200 {request.method} {request.path_qs}", flush=True)
    return await handler(request)


async def basic_home(request: web.Request) -> web.Response:
    """Its script loads /basic/data.json: a browser sends the credentials with it at once."""
    return page(
        "Admin",
        """<h1 id="title">Admin</h1><p id="data">loading</p>
<script>fetch("/basic/data.json").then((r) => r.json())
  .then((d) => { document.getElementById("data").textContent = d.secret; });</script>""",
    )


async def basic_data(request: web.Request) -> web.Response:
    return web.json_response({"secret": "admin data", "path": request.path})


async def basic_echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)})


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2, middlewares=[log_requests, same_origin_only, basic_auth])
    app[STATE] = {}
    app[SESSIONS] = {}
    app[FLAKY] = {}
    app[VERSIONS] = {}
    app.router.add_get("/", index)
    app.router.add_get("/page2", page2)
    app.router.add_post("/form", form)
    app.router.add_get("/done", done)
    app.router.add_get("/static/{name}", static)
    app.router.add_route("*", "/api/echo", echo)
    app.router.add_get("/versioned/{name}", versioned)
    app.router.add_post("/versioned/{name}", versioned)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_post("/api/sink", sink)
    app.router.add_get("/upload", upload_form)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/downloads", downloads)
    app.router.add_get("/attachment", attachment)
    app.router.add_get("/events", events)
    app.router.add_get("/events/flaky", flaky_events)
    app.router.add_get("/endless", endless)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/private", private)
    app.router.add_get("/logout", logout)
    app.router.add_get("/peek", peek)
    app.router.add_get("/chat", chat)
    app.router.add_get("/ws/echo", ws_echo)
    app.router.add_get("/basic/", basic_home)
    app.router.add_get("/basic/ws", ws_echo)
    app.router.add_post("/basic/echo", basic_echo)
    app.router.add_get("/basic/{name:.*}", basic_data)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def announce(app: web.Application) -> None:
        print(f"test app listening on 127.0.0.1:{args.port}", flush=True)

    app = build_app()
    app.on_startup.append(announce)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
