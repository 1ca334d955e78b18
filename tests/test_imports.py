"""What a search process imports: every worker and `dpopt search` carries it resident."""
import subprocess
import sys

HEAVY = ("scipy.stats", "cma", "matplotlib", "nevergrad")  # ~60, ~25, ~40, ~95 MB resident


def test_a_genetic_search_process_leaves_report_and_other_searchers_packages_unimported():
    code = ("import sys, dpopt; from dpopt.optim import SEARCHERS; SEARCHERS.get('genetic'); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
