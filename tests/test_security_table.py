"""The attack table of docs/security.md (section 3) cannot rot: every attack the threat model
promises a refusal for has its row, and every test a row names exists (a module-level test
function in that file, found by reading the file's syntax tree: nothing is imported)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
ATTACKS = (
    "MITM", "Device-id hijack", "Replayed token", "Revoked token", "Expired token", "SSRF",
    "Header injection", "Request smuggling", "Oversized request heads", "Oversized bodies",
    "Slowloris", "Signaling floods", "Resource exhaustion by many half-open sessions",
)


def table_rows() -> list[list[str]]:
    """The attack table's body rows, as cells."""
    section = DOC.read_text().split("## 3. Attacks and their refusals", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| attack | expected refusal"), lines[0]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_attack_has_a_row_with_a_refusal_and_tests() -> None:
    rows = table_rows()
    assert [len(row) for row in rows] == [3] * len(rows)
    for attack in ATTACKS:
        assert sum(row[0].startswith(attack) for row in rows) == 1, attack
    for attack, refusal, tests in rows:
        assert refusal and TEST_ID.search(tests), attack
        assert not TEST_ID.sub("", tests).strip(" ,"), f"{attack}: not a test id in {tests!r}"


def test_every_named_test_exists() -> None:
    missing = []
    for _, _, tests in table_rows():
        for path, name in TEST_ID.findall(tests):
            file = ROOT / path
            if not file.is_file() or name not in defined_functions(file):
                missing.append(f"{path}::{name}")
    assert not missing, missing
