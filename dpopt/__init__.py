"""dpopt: find which Transformer blocks of a causal LM can be removed, by black-box search.

The Python API (what the CLI calls)::

    import dpopt
    lm = dpopt.load("smollm2-135m")
    ev = dpopt.make_evaluator(lm, "ppl", data="wikipedia")
    result = dpopt.search(lm, ev, "genetic", remove=6, budget=200)
    dpopt.export(lm, result.removed_units, "pruned/")
    grid = dpopt.compare(lm, "kl", algos="greedy,random", remove=6, budget=100, seeds=3, report="cmp/")
    both = dpopt.study(lm, "ppl,kl", algos="greedy,random", remove=6, budget=100, seeds=3, report="study/")
"""
__version__ = "0.1.0"

from .api import evaluate_mask, export, load, make_evaluator, mask_from_removed, search  # noqa: E402
from .experiments.compare import CompareResult, StudyResult, compare, study  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluator import Evaluator, LoadedModel  # noqa: E402
from .genome import Constraint, LayerMask  # noqa: E402

__all__ = ["load", "make_evaluator", "search", "compare", "study", "CompareResult", "StudyResult", "export", "evaluate_mask", "mask_from_removed", "Evaluator",
           "LoadedModel", "LayerMask", "Constraint", "UserError", "__version__"]
