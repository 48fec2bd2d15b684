"""Where a reload's connection setup goes: the manager page's User Timing marks
(`peerproxy:*`, webclient/manager.js) and its document timing, over reloads of the test app
through the browser client (tests/browser/harness.py: a loopback-only namespace with the
signaling server, the daemon, the test app and Chromium; root).

    python bench/reload.py --reloads 6

Prints one line per reload (ms since the page's navigation start) and the medians: the
document, DOMContentLoaded (the manager's modules loaded), the credential, the worker, the
ICE config, the signaling connection, offer, answer, the channel open and the viewer granted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from tests.browser.harness import BrowserWorld  # noqa: E402

TIMES = """(() => {
  const n = performance.getEntriesByType('navigation')[0];
  const out = {document: n.responseEnd, dcl: n.domContentLoadedEventEnd};
  for (const m of performance.getEntriesByType('mark')) {
    if (m.name.startsWith('peerproxy:')) out[m.name.slice(10)] = m.startTime;
  }
  return out;
})()"""
CONNECTED = "() => window.__peerproxy && window.__peerproxy.phase === 'connected'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=6)
    args = parser.parse_args()
    world = BrowserWorld(Path(tempfile.mkdtemp(prefix="reload-")))
    world.up()
    rows: list[dict[str, float]] = []
    try:
        world.open("/")
        for _ in range(args.reloads):
            world.agent.page.reload()
            world.agent.page.wait_for_function(CONNECTED, timeout=20_000)
            rows.append(world.agent.page.evaluate(TIMES))
            print("  ".join(f"{k} {v:.0f}" for k, v in sorted(rows[-1].items(), key=lambda kv: kv[1])),
                  flush=True)
    finally:
        world.down()
    names = sorted(rows[0], key=lambda k: statistics.median(r.get(k, 0) for r in rows))
    print("median: " + "  ".join(f"{k} {statistics.median(r[k] for r in rows if k in r):.0f}" for k in names))


if __name__ == "__main__":
    main()
