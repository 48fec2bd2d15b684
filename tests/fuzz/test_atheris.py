"""A bounded coverage-guided run of each atheris harness per test run (`make fuzz` runs them
longer). The committed corpus is read, never written: new inputs go to a temporary directory.
A crash fails the test with libFuzzer's report; save the input under tests/fuzz/crashes/."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.budget import COUNTS

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parents[1]
RUNS = 20_000
SECONDS = 30

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris has no wheel for this platform"
)


@pytest.mark.parametrize("target", ["frames", "heads"])
def test_coverage_guided_run_finds_no_crash(target: str, tmp_path: Path) -> None:
    corpus = FUZZ / "corpus" / target
    assert 3 <= len(list(corpus.iterdir())) <= 100
    new = tmp_path / "new"
    new.mkdir()
    result = subprocess.run(
        [sys.executable, str(FUZZ / f"atheris_{target}.py"), f"-runs={RUNS}",
         f"-max_total_time={SECONDS}", f"-artifact_prefix={tmp_path}/", str(new), str(corpus)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=SECONDS * 10,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert not list(tmp_path.glob("crash-*"))
    done = re.search(r"Done (\d+) runs", result.stderr)
    assert done, result.stderr[-4000:]
    COUNTS[f"atheris {target}"] = int(done.group(1))
    assert re.search(r"INFO: Instrumenting peerproxyd.protocol", result.stderr)
