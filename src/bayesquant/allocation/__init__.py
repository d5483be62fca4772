"""Bit allocation: cost tables cost[g, b] and allocators (uniform, knapsack, baq, exact, quantile_inform,
random_bits) behind `allocate`."""

from bayesquant.allocation.allocators import ALLOCATORS, allocate, normalized_informativeness
from bayesquant.allocation.table import Allocation, Budget, BudgetKind, CostTable

__all__ = ["ALLOCATORS", "Allocation", "Budget", "BudgetKind", "CostTable", "allocate", "normalized_informativeness"]
