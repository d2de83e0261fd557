"""fedmoe_da: FedMoE-DA, federated Mixture-of-Experts with domain-aware per-expert aggregation.

    from fedmoe_da import ExperimentConfig, simulate
    result = simulate(ExperimentConfig(strategy="fedmoe_da", rounds=10))
    result.history   # round x client metrics
    result.ledger    # every transfer: round, src, dst, channel, group, numel, bytes
"""
from .config import ConfigError, ExperimentConfig
from .fl.run_folder import load_run
from .fl.simulation import simulate
from .results import compare

__version__ = "0.1.0"
__all__ = ["ExperimentConfig", "ConfigError", "simulate", "compare", "load_run", "__version__"]
