"""LayerMask, the genome every searcher proposes and the evaluator scores.

A mask is a bitstring with one bit per removable unit; ``True`` means the unit is KEPT. A
:class:`UnitSpace` says what the units are: whole decoder blocks (``block.I``, the
default), or each block's attention and MLP sub-layers (``attn.I``, ``mlp.I``), always in
execution order so that a mask's prefix is a prefix of the network. Searchers see only
bits; the evaluator, the record and export read the names.

The search space is fixed by a :class:`Constraint`: exactly ``k`` units removed (or a count
range, or a parameter budget), never a protected one. Operators here (swap mutation, crossover + repair) keep a mask inside that
space, because DEAP's stock ``mutFlipBit``/``cxTwoPoint`` would change how many units are
removed.
"""
from .constraint import Constraint, parse_params, parse_remove
from .mask import LayerMask, parse_index_list
from .space import BLOCK_UNIT, UnitSpace

__all__ = ["BLOCK_UNIT", "Constraint", "LayerMask", "UnitSpace", "parse_index_list", "parse_params", "parse_remove"]
