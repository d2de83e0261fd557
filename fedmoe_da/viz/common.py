"""What several plots share: a run's name in legends and the blocks of a sorted list of group names."""
from __future__ import annotations


def run_label(result) -> str:
    """A run's name in tables and legends: its config's label, else its strategy (as ``results.comparison_table``)."""
    return result.config.label or result.config.strategy


def group_starts(groups: list[str]) -> list[int]:
    """Where each block of equal neighbours begins in ``groups``, then ``len(groups)``: a matrix sorted by group
    has its blocks between consecutive starts (``["a", "a", "b"]`` -> ``[0, 2, 3]``)."""
    return [i for i in range(len(groups)) if i == 0 or groups[i] != groups[i - 1]] + [len(groups)]
