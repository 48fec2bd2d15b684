"""Command line: serve, signal, connect, check-config, id, share, viewers, revoke."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal as signals
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peerproxyd import __version__
from peerproxyd.errors import ConfigError, IdentityError, LinkError, PeerProxyError

if TYPE_CHECKING:
    from peerproxyd.device.daemon import Daemon

logger = logging.getLogger("peerproxyd")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerproxyd",
        description="Expose local HTTP services to remote browsers over WebRTC data channels.",
    )
    parser.add_argument("--version", action="version", version=f"peerproxyd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon in front of local services")
    serve.add_argument("--config", required=True, help="TOML configuration file")

    check = sub.add_parser(
        "check-config", help="validate a configuration file (daemon or signaling server) and exit"
    )
    check.add_argument("config", help="TOML configuration file")

    ident = sub.add_parser(
        "id", help="print the device id and DTLS fingerprint (creating the device key if needed)"
    )
    ident.add_argument("--config", required=True, help="TOML configuration file")

    signal = sub.add_parser("signal", help="run the signaling server")
    signal.add_argument("--config", help="TOML file with [server], [limits], [log] tables")
    signal.add_argument("--host", help="listen address (default 127.0.0.1; overrides the file)")
    signal.add_argument("--port", type=int, help="listen port (default 8787; overrides the file)")

    signal.add_argument(
        "--stun-port", type=int, default=3478,
        help="also answer STUN binding requests on this UDP port (0: off; default 3478)",
    )
    signal.add_argument(
        "--redis", metavar="URL",
        help="share state with other instances through Redis, e.g. redis://127.0.0.1:6379/0 "
        "(overrides [redis] url in the file)",
    )

    share = sub.add_parser(
        "share", help="add a viewer: print its share link (and a QR code) once"
    )
    share.add_argument("--config", required=True, help="the daemon's TOML configuration file")
    share.add_argument("--service", required=True, help="the one service the viewer may use")
    share.add_argument("--name", required=True, help="the viewer: 1-64 of A-Z a-z 0-9 . _ -")
    share.add_argument(
        "--expires", default="never", help="7d, 12h, 30m or never (default: never)"
    )
    share.add_argument(
        "--base-url",
        help="http(s)://host[:port] the link points at (default: [signaling] public_url, "
        "else derived from [signaling] url)",
    )
    share.add_argument("--no-qr", action="store_true", help="print the link only")

    viewers = sub.add_parser("viewers", help="list the viewers of a device")
    viewers.add_argument("--config", required=True, help="the daemon's TOML configuration file")

    revoke = sub.add_parser(
        "revoke", help="revoke a viewer: its live sessions close within a second"
    )
    revoke.add_argument("--config", required=True, help="the daemon's TOML configuration file")
    revoke.add_argument("name", help="the viewer to revoke")

    discover = sub.add_parser("discover", help="list the peerproxyd devices on this LAN (mDNS)")
    discover.add_argument("--timeout", type=float, default=3.0, help="seconds to listen")

    demo = sub.add_parser("demo", help="run signaling, a demo app, a daemon and a client here")
    demo.add_argument("--signal-port", type=int, default=8787)
    demo.add_argument("--listen-port", type=int, default=9000)

    connect = sub.add_parser("connect", help="expose a device's service on a local port")
    connect.add_argument(
        "link", help="the share link from `peerproxyd share` (- reads it from stdin)"
    )
    connect.add_argument("--listen", default="127.0.0.1:9000", help="HOST:PORT (port 0: any)")
    connect.add_argument(
        "--signal", help="signaling URL (default: from the link, e.g. wss://host/ws)"
    )
    connect.add_argument(
        "--host-address",
        action="append",
        default=[],
        help="gather ICE candidates only on this address (repeatable)",
    )
    connect.add_argument(
        "--ice-server", action="append", default=[], help="stun:host:port (repeatable)"
    )
    connect.add_argument(
        "--backend", choices=("auto", "aiortc", "native"), default="auto",
        help="WebRTC stack, as [transport] backend (default auto: native when installed)",
    )
    return parser


def setup_logging(verbose: bool) -> None:
    """stderr; no timestamps under journald, which adds its own."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journald:
        fmt = "%(asctime)s " + fmt
    debug = verbose or os.environ.get("PEERPROXYD_DEBUG") == "1"
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format=fmt, stream=sys.stderr)
    if not debug:
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_quiet_bad_heads)


def _quiet_bad_heads(record: logging.LogRecord) -> bool:
    """aiohttp logs every malformed or oversized request head as an ERROR with a traceback,
    after answering it with 400: anyone who can reach a listener could fill the log. Such a
    record becomes one DEBUG line (shown with --verbose only)."""
    from aiohttp.http_exceptions import HttpProcessingError

    error = record.exc_info[1] if record.exc_info else None
    if not isinstance(error, HttpProcessingError):
        return True
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    record.msg, record.args = "%s: %d %s", (record.getMessage(), error.code, error.message)
    record.exc_info = record.exc_text = None
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def entry() -> None:
    """The `peerproxyd` command (and `python -m peerproxyd`). Each command imports what it
    needs when it runs (issue 15: the signaling server loads no WebRTC stack, a daemon or
    client only its chosen backend)."""
    code = main()
    from peerproxyd.rtc.transport import exit_code

    raise SystemExit(exit_code(code))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "id":
            _print_id(args.config)
        if args.command == "serve":
            _serve(args.config)
        elif args.command == "signal":
            _signal(args)
        elif args.command == "connect":
            _connect(args)
        elif args.command in ("share", "viewers", "revoke"):
            _viewer_command(args)
        elif args.command == "discover":
            from peerproxyd.appliance.mdns import discover, format_devices

            print(format_devices(asyncio.run(discover(args.timeout))))
        elif args.command == "demo":
            from peerproxyd.demo import run_demo

            _run(run_demo(signal_port=args.signal_port, listen_port=args.listen_port))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return 2
    except LinkError as exc:
        print(f"link: {exc}", file=sys.stderr)
        return 2
    except PeerProxyError as exc:
        logger.error("failed: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _viewer_command(args: argparse.Namespace) -> None:
    """share, viewers, revoke: edit or list the viewer store next to the daemon."""
    from datetime import UTC, datetime

    from peerproxyd.config import load
    from peerproxyd.trust import identity, sharing
    from peerproxyd.trust.viewers import ViewerStore

    settings = load(args.config)
    directory = settings.device.state_path
    if not identity.identity_exists(directory):
        # Most likely the wrong directory (a systemd unit's StateDirectory is not the shell's
        # default): viewers made here would be for no running device.
        raise IdentityError(
            f"no device key in {directory}: start the daemon first, or point this command at "
            "its state directory ([device] state_dir, or STATE_DIRECTORY=/var/lib/peerproxyd/"
            f"{Path(args.config).stem} for the systemd unit)"
        )
    store = ViewerStore(directory)
    now = datetime.now(UTC)
    if args.command == "viewers":
        store.load()
        print(sharing.viewers_table(store, now), end="")
    elif args.command == "revoke":
        record = store.revoke(args.name, now=now)
        print(f"revoked {record.name} (service {record.service}); "
              "a running daemon closes its sessions within a second")
    else:
        device = identity.load(directory)
        shared = sharing.share(
            settings, store, device_id=device.device_id,
            fingerprint=device.fingerprint_bytes, service=args.service, name=args.name,
            expires=args.expires, base=args.base_url, now=now,
        )
        if not args.no_qr:
            print(sharing.terminal_qr(shared.link), end="")
        expires = shared.record.expires
        print(f"viewer {args.name} may use {args.service} "
              f"{'until ' + expires.isoformat() if expires else 'with no expiry'}; "
              "the link is shown only now:", file=sys.stderr)
        print(shared.link, flush=True)


def _check_config(path: str) -> int:
    from peerproxyd.config import load
    from peerproxyd.signaling import config as signal_config

    try:
        if signal_config.is_signal_config(path):
            server = signal_config.load(path).server
            print(f"ok: signaling server on {server.host}:{server.port}")
            return 0
        settings = load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    from peerproxyd.trust import identity

    state_dir = settings.device.state_path
    line = f"ok: {len(settings.services)} services"
    if identity.identity_exists(state_dir):  # never created here: check-config changes nothing
        try:
            line += f", device id {identity.load(state_dir).device_id}"
        except PeerProxyError as exc:
            print(f"device identity: {exc}", file=sys.stderr)
            return 1
    else:
        line += f" (no device key yet in {state_dir}: the first start creates it)"
    print(line)
    return 0


def _print_id(path: str) -> None:
    from peerproxyd.config import load
    from peerproxyd.trust.identity import load_or_create

    identity = load_or_create(load(path).device.state_path)
    print(f"device id: {identity.device_id}")
    print(f"fingerprint: sha-256 {identity.fingerprint}")


def _signal(args: argparse.Namespace) -> None:
    from peerproxyd.signaling import config as signal_config
    from peerproxyd.signaling.server import run_signaling

    settings = signal_config.SignalSettings()
    if args.config:
        settings = signal_config.load(args.config)
        if not os.environ.get("PEERPROXYD_DEBUG") and not args.verbose:
            logging.getLogger().setLevel(settings.log.level.upper())
    host = args.host if args.host is not None else settings.server.host
    port = args.port if args.port is not None else settings.server.port
    stun = (host, args.stun_port) if args.stun_port else None
    kwargs = settings.app_kwargs()
    if args.redis:
        kwargs.update(redis_url=args.redis, redis_options=settings.redis_options())
    _run(run_signaling(host, port, stun=stun, **kwargs))


def _serve(path: str) -> None:
    from peerproxyd.config import load
    from peerproxyd.device.daemon import Daemon

    settings = load(path)
    if not os.environ.get("PEERPROXYD_DEBUG"):
        logging.getLogger().setLevel(settings.log.level.upper())
    _run(_serve_until_signalled(Daemon(settings, config_path=path)))


async def _serve_until_signalled(daemon: Daemon) -> None:
    """Run the daemon with systemd's signals: SIGTERM or SIGINT stops gracefully (drain),
    a second one stops at once; SIGHUP reloads the configuration file."""
    task = asyncio.create_task(daemon.run())
    loop = asyncio.get_running_loop()
    forced = False

    def on_stop(sig: signals.Signals) -> None:
        nonlocal forced
        if daemon.stopping:
            logger.warning("%s again: stopping at once", sig.name)
            forced = True
            task.cancel()
        else:
            logger.info("%s: stopping", sig.name)
            daemon.stop()

    def on_reload() -> None:
        logger.info("SIGHUP: reloading")
        daemon.request_reload()

    for sig in (signals.SIGTERM, signals.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signals.SIGHUP, on_reload)
    try:
        await task
    except asyncio.CancelledError:
        if not forced:
            raise
    finally:
        for sig in (signals.SIGTERM, signals.SIGINT, signals.SIGHUP):
            loop.remove_signal_handler(sig)


def _connect(args: argparse.Namespace) -> None:
    from peerproxyd.client.native import NativeClient
    from peerproxyd.config import IceServer, IceSettings
    from peerproxyd.trust.viewer_auth import parse_link

    link = parse_link(sys.stdin.readline() if args.link == "-" else args.link)
    host, _, port = args.listen.rpartition(":")
    ice = IceSettings(
        servers=[IceServer(urls=[u]) for u in args.ice_server],
        host_addresses=args.host_address,
    )
    try:
        client = NativeClient(
            link=link,
            signal_url=args.signal,
            listen=(host or "127.0.0.1", int(port)),
            ice=ice,
            backend=args.backend,
        )
    except ValueError as exc:
        sys.exit(f"connect --backend {args.backend}: {exc}")

    async def run() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(client.run(ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            print(f"{link.device}/{link.service} is at {client.url}", flush=True)
        await task

    _run(run())
