"""Data: the embedded multi-domain datasets, real-dataset loaders, and partitioners.

    data = build(config)              # MultiDomainDataset: split train/test once, seeded
    clients = partition(data, config) # list[ClientData], one per client
"""
from .clients import ClientData, client_counts, client_table, partition
from .datasets import MultiDomainDataset, build
from .domains import DOMAIN_TRANSFORMS

__all__ = ["MultiDomainDataset", "ClientData", "build", "partition", "client_counts", "client_table",
           "DOMAIN_TRANSFORMS"]
