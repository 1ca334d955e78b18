"""The README's searcher table is printed by the command the README gives, from the jsonl files
in the repository: run that command as written and find its genetic medians in the table."""
from __future__ import annotations

import subprocess
import textwrap
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_command(readme: str) -> str:
    """The `--tables-from` command block, as a user would paste it (continuation lines and all)."""
    lines = readme.splitlines()
    start = next(i for i, ln in enumerate(lines) if "searchers.py --tables-from" in ln)
    block = [lines[start]]
    while block[-1].rstrip().endswith("\\"):
        block.append(lines[start + len(block)])
    return textwrap.dedent("\n".join(block))  # as rendered: the code block's indent goes, the rest stays


def test_readme_searcher_table_comes_from_its_command():
    readme = (ROOT / "README.md").read_text()
    command = _readme_command(readme).replace("python ", f"{sys.executable} ", 1)
    run = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    medians = [row.split("|")[2].strip() for row in run.stdout.splitlines() if row.startswith("| genetic |")]
    assert len(medians) == 4, run.stdout  # ppl K=4, ppl K=8, kl K=4, kl K=8
    table_row = next(ln for ln in readme.splitlines() if ln.startswith("| genetic | "))
    cells = [c.replace("*", "").strip().split(" ")[0] for c in table_row.split("|")[2:6]]
    printed = [f"{float(m):.2f}" if float(m) > 5 else f"{float(m):.4f}" for m in medians]
    assert cells == printed, (cells, printed)
