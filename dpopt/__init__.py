"""dpopt: find which Transformer blocks of a causal LM can be removed, by black-box search.

The Python API (what the CLI calls)::

    import dpopt
    problem = dpopt.Problem(model="smollm2-135m", objective="kl", data="wikipedia").validate()
    plan = dpopt.SearchPlan(algo="genetic", remove=6, budget=200).validate()
    lm = problem.load()
    result = dpopt.run(lm, problem.build(lm), plan)       # what `dpopt search` does

    lm = dpopt.load("smollm2-135m")                       # or the same in shorthand
    ev = dpopt.make_evaluator(lm, "ppl", data="wikipedia")
    result = dpopt.search(lm, ev, "genetic", remove=6, budget=200)
    dpopt.export(lm, result.removed_units, "pruned/")
    grid = dpopt.compare(lm, "kl", algos="greedy,random", remove=6, budget=100, seeds=3, report="cmp/")
    both = dpopt.study(lm, "ppl,kl", algos="greedy,random", remove=6, budget=100, seeds=3, report="study/")
"""
__version__ = "0.1.0"

from .api import evaluate_mask, export, load, make_evaluator, mask_from_removed, run, search  # noqa: E402
from .problem import GridPlan, Problem, SearchPlan  # noqa: E402
from .result import Result  # noqa: E402
from .experiments.compare import CompareResult, StudyResult, compare, study  # noqa: E402
from .experiments.rerank import RepairPlan  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluator import Evaluator, LoadedModel  # noqa: E402
from .genome import Constraint, LayerMask  # noqa: E402

__all__ = ["Problem", "SearchPlan", "GridPlan", "Result", "run", "load", "make_evaluator", "search", "compare", "study", "CompareResult", "StudyResult", "RepairPlan", "export", "evaluate_mask", "mask_from_removed", "Evaluator",
           "LoadedModel", "LayerMask", "Constraint", "UserError", "__version__"]
