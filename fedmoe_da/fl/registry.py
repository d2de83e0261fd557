"""The strategy registry: name -> class (``config.strategy`` picks one).

The interface is in ``strategy.py``, the baselines in ``baselines.py``,
FedMoE-DA in ``fedmoe_da.py``.
"""
from __future__ import annotations

from ..config import ExperimentConfig
from .baselines import Ditto, FedAvg, FedPer, FedProx, FedRep, Local
from .fedmoe_da import FedMoEDA
from .state import State
from .strategy import Groups, Strategy

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedMoEDA, FedAvg, FedProx, FedPer, FedRep, Ditto, Local)}


def make_strategy(config: ExperimentConfig, groups: Groups, template: State, num_train: list[int],
                  home_domains: list[int] | None = None) -> Strategy:
    return STRATEGY_CLASSES[config.strategy](config, groups, template, num_train, home_domains)


__all__ = ["STRATEGY_CLASSES", "make_strategy", "Strategy", "Local", "FedAvg", "FedProx", "FedPer", "FedRep",
           "Ditto", "FedMoEDA"]
