"""Federated learning: clients, strategies, aggregation math, P2P plan, transport + ledger, simulation."""
from .aggregation import aggregate_experts, aggregation_matrix, correlation, drop_absent, fedavg
from .p2p import p2p_graph
from .simulation import SimulationResult, run_simulation
from .strategies import STRATEGY_CLASSES, make_strategy
from .transport import SERVER, CommLedger, InProcessTransport, Transport

__all__ = ["aggregation_matrix", "aggregate_experts", "correlation", "drop_absent", "fedavg", "p2p_graph",
           "SimulationResult", "run_simulation", "STRATEGY_CLASSES", "make_strategy", "SERVER",
           "CommLedger", "InProcessTransport", "Transport"]
