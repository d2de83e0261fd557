"""Federated learning: client states and training, strategies, aggregation math, P2P plan, transport + ledger,
the runner."""
from .aggregation import aggregate_experts, aggregation_matrix, correlation
from .aggregation_scaled import drop_absent, sparse_aggregation_matrix
from .p2p import p2p_graph
from .registry import STRATEGY_CLASSES, make_strategy
from .server_aggregation import fedavg
from .simulation import simulate
from .summary import SimulationResult
from .transport import SERVER, CommLedger, InProcessTransport, Transport

__all__ = ["aggregation_matrix", "aggregate_experts", "correlation", "drop_absent", "fedavg", "p2p_graph",
           "sparse_aggregation_matrix",
           "SimulationResult", "simulate", "STRATEGY_CLASSES", "make_strategy", "SERVER",
           "CommLedger", "InProcessTransport", "Transport"]
