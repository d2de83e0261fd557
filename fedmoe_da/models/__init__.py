"""Models (backbones + MoE layers) and their parameter groups; group and column names live in ``names``."""
from .groups import ParamRef, moe_prefixes, param_groups
from .networks import MODEL_CLASSES, CNNMoE, MLPMoE, MoEModel, ViTMoE, build

__all__ = ["build", "param_groups", "moe_prefixes", "ParamRef", "MODEL_CLASSES", "MoEModel", "CNNMoE", "MLPMoE",
           "ViTMoE"]
