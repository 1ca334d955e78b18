"""Costs a search minimises or caps beside the objective: parameters, measured latency, Pareto fronts.

``params`` is counted from the units' weights; ``latency`` (:mod:`dpopt.costs.latency`) is
measured on the device. Each is one entry of the ``COSTS`` registry.
"""
from .base import COSTS, CachedCost, Cost, ParamsCost, check_cost_options, make_costs, model_params, register_cost, unit_params
from . import latency  # noqa: E402,F401  (registers the measured latency cost)

__all__ = ["COSTS", "CachedCost", "Cost", "ParamsCost", "check_cost_options", "make_costs", "model_params", "register_cost",
           "unit_params"]
