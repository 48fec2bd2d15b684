"""NAT benchmark: connection set-up and request times on the emulated network of tests/netns.py.

For each path, a LAN viewer (host <-> host, the daemon's `.local` candidate resolved over
mDNS), a viewer behind a cone NAT (srflx, hole punched with coturn's STUN), and one behind a
symmetric NAT (relayed by coturn over UDP), it starts `--runs` native clients one after the
other and records the set-up time each logs ("data channel open in N ms") and the time of a
1 KB and a 10 MB GET through it. Writes the table into bench/nat.md and a chart to
bench/nat.png.

Needs root (network namespaces), iproute2, iptables and coturn: `sudo .venv/bin/python
bench/nat.py`. There is no added delay: the kernel here has no netem, so the figures are what
the stack itself costs, on links with ~0.1 ms RTT.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository, not bench/, first on the path (imports as `tests.netns`).
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from tests.netns import NetStack, Network, report_from_log, setup_ms, unavailable_reason  # noqa: E402

PATHS = [
    # name, remote NAT kind, viewer namespace, expected pair type
    ("LAN (host)", "cone", "lanv", "host"),
    ("cone NAT (srflx)", "cone", "rv", "srflx"),
    ("symmetric NAT (relay)", "symmetric", "rv", "relay"),
]
SMALL = 1024
LARGE = 10 * 1000 * 1000
BEGIN, END = "<!-- nat-bench:begin -->", "<!-- nat-bench:end -->"


@dataclass
class Result:
    name: str
    setup_ms: list[float] = field(default_factory=list)
    small_ms: list[float] = field(default_factory=list)
    large_s: list[float] = field(default_factory=list)

    def row(self) -> str:
        def cell(values: list[float], fmt: str) -> str:
            return f"{fmt.format(min(values))} / {fmt.format(statistics.median(values))}"

        mbps = [LARGE / s / 1e6 for s in self.large_s]
        return (
            f"| {self.name} | {cell(self.setup_ms, '{:.0f}')} | {cell(self.small_ms, '{:.1f}')} | "
            f"{cell(self.large_s, '{:.2f}')} | {max(mbps):.1f} / {statistics.median(mbps):.1f} |"
        )


def measure(name: str, remote_nat: str, role: str, expected: str, runs: int, logs: Path) -> Result:
    result = Result(name)
    net = Network(logs / name.split()[0].lower(), remote_nat=remote_nat)  # type: ignore[arg-type]
    net.log_dir.mkdir(parents=True, exist_ok=True)
    net.up()
    try:
        stack = NetStack(net).services()
        stack.daemon()
        for run in range(runs):
            client, url = stack.client(role, port=9000 + run)
            report = report_from_log(client)
            if report.type != expected:
                raise SystemExit(f"{name}: expected a {expected} pair, got {report.line}")
            result.setup_ms.append(setup_ms(client))
            small = net.fetch(role, f"{url}/download?size={SMALL}")
            large = net.fetch(role, f"{url}/download?size={LARGE}", timeout=120)
            assert (small.size, large.size) == (SMALL, LARGE), (small, large)
            result.small_ms.append(small.seconds * 1000)
            result.large_s.append(large.seconds)
            client.stop()
            print(f"{name} run {run + 1}: setup {result.setup_ms[-1]:.0f} ms, "
                  f"1 KB {result.small_ms[-1]:.1f} ms, 10 MB {result.large_s[-1]:.2f} s",
                  flush=True)
    finally:
        net.down()
    return result


def write_markdown(results: list[Result], runs: int, path: Path) -> None:
    table = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')}, {runs} connections per path, min / median.",
            "",
            "| path | set-up ms | 1 KB GET ms | 10 MB GET s | 10 MB MB/s |",
            "|---|---|---|---|---|",
            *(r.row() for r in results),
            "",
            "![NAT benchmark](nat.png)",
        ]
    )
    text = path.read_text() if path.exists() else f"# NAT benchmark\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def write_chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, values, title in (
        (axes[0], [statistics.median(r.setup_ms) for r in results], "set-up (ms)"),
        (axes[1], [statistics.median(r.small_ms) for r in results], "1 KB GET (ms)"),
        (axes[2], [LARGE / statistics.median(r.large_s) / 1e6 for r in results], "10 MB (MB/s)"),
    ):
        ax.bar(names, values, color=["#4c72b0", "#55a868", "#c44e52"])
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    fig.suptitle("peerproxyd over emulated NATs (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    with tempfile.TemporaryDirectory(prefix="nat-bench-") as tmp:
        results = [measure(*path, runs=args.runs, logs=Path(tmp)) for path in PATHS]
    write_markdown(results, args.runs, args.out / "nat.md")
    write_chart(results, args.out / "nat.png")
    for r in results:
        print(r.row())


if __name__ == "__main__":
    main()
