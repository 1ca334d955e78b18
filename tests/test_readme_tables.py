"""benchmarks/README.md's searcher tables are printed by the commands it gives, from the jsonl files in
the repository: run each `--tables-from` command as written and find its genetic medians in the first
row of the table that follows it."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "benchmarks" / "README.md"


def _commands(lines: list[str]) -> list[tuple[str, int]]:
    """Each `--tables-from` command block, as a user would paste it (continuation lines and all),
    with the index of the line after it."""
    out = []
    for start, line in enumerate(lines):
        if "searchers.py --tables-from" not in line:
            continue
        block = [line]
        while block[-1].rstrip().endswith("\\"):
            block.append(lines[start + len(block)])
        out.append((textwrap.dedent("\n".join(block)), start + len(block)))  # the code block's indent goes
    return out


def _first_row_after(lines: list[str], index: int) -> str:
    """The first data row of the first markdown table after line `index`."""
    table = [ln for ln in lines[index:] if ln.startswith("|")]
    assert len(table) >= 3 and table[1].startswith("|---"), table[:3]
    return table[2]


def _cell_value(cell: str) -> str:
    return cell.replace("*", "").strip().split(" ")[0].rstrip(",")


def test_benchmark_searcher_tables_come_from_their_commands():
    lines = DOC.read_text().splitlines()
    commands = _commands(lines)
    assert len(commands) == 2, commands  # the grid table and the screen=0.5 table
    for command, after in commands:
        command = command.replace("python ", f"{sys.executable} ", 1)
        run = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        medians = [row.split("|")[2].strip() for row in run.stdout.splitlines() if row.startswith("| genetic |")]
        assert len(medians) == 4, run.stdout  # ppl K=4, ppl K=8, kl K=4, kl K=8
        cells = [_cell_value(c) for c in _first_row_after(lines, after).split("|")[2:6]]
        printed = [f"{float(m):.2f}" if float(m) > 5 else f"{float(m):.4f}" for m in medians]
        assert cells == printed, (command, cells, printed)
