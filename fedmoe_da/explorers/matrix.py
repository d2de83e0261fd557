"""Explorers of FedMoE-DA's aggregation matrix (notebook 04): A recomputed on a run's saved proxies.

A FedMoE-DA run keeps, per refresh round and MoE layer, the uploaded gates behind
A and the pool's clients (``result.matrices``, the run folder's matrices/;
``fl/fedmoe_da.py`` ``matrices()``), so A can be recomputed here for any P, tau
or proxy without training:

    gates, pool = saved_gates(result)                    # (M, d), the pool's clients in A's row order
    A, diag = recompute(result, P=5, tau=0.1, proxy="gate_signature")
    ex = matrix_explorer(result)                         # P, tau and proxy sliders; purity in the title

Rows and columns are drawn sorted by the home domain of each pair's client, so
a domain-aware A is block-diagonal.
"""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch

from .. import viz
from ..fl.aggregation_scaled import sparse_aggregation_matrix
from ..fl.diagnostics import matrix_diagnostics
from ..fl.proxies import pool_proxies
from ..fl.run_folder import matrix_key, matrix_round
from ..fl.summary import SimulationResult
from ..models.names import gate_group, pool_key
from ..widgets import Explorer

PROXIES = ("gate", "gate_centred", "gate_signature", "domain")
"""The proxies that can be rebuilt from the saved gates (``gate_delta`` needs each client's initial gate, not saved)."""


def refresh_rounds(result: SimulationResult, layer: int = 0) -> list[int]:
    """The rounds at which the run recomputed A of ``layer`` (those kept in its matrices)."""
    rounds = sorted({matrix_round(k) for k in result.matrices if k == matrix_key(matrix_round(k), gate_group(layer))})
    if not rounds:
        raise ValueError(f"the run ({result.config.strategy}) saved no gates of layer {layer}: only a FedMoE-DA run "
                         "keeps them (result.matrices)")
    return rounds


def saved_gates(result: SimulationResult, round: int | None = None, layer: int = 0) -> tuple[torch.Tensor, list[int]]:
    """(gates (M, d), pool): the uploaded gate rows behind A at a refresh ``round`` (None: the last) and its clients."""
    rounds = refresh_rounds(result, layer)
    round = rounds[-1] if round is None else round
    if round not in rounds:
        raise ValueError(f"round={round} is invalid: A of layer {layer} was refreshed at rounds {rounds}")
    gates = torch.as_tensor(np.asarray(result.matrices[matrix_key(round, gate_group(layer))]))
    return gates, [int(k) for k in result.matrices[matrix_key(round, pool_key(layer))]]


def home_domains(result: SimulationResult) -> list[int]:
    """Home domain index of every client, indexed by client id (the run's clients table)."""
    return result.clients.sort_values("client")["home_domain"].astype(int).tolist()


def proxies_of(proxy: str, gates: torch.Tensor, pool: list[int], num_experts: int, homes: list[int]) -> torch.Tensor:
    """The (M, d') proxies of a pool ordered (client, slot), as ``config.proxy`` builds them (``FedMoEDA.proxies``)."""
    if proxy not in PROXIES:
        raise ValueError(f"proxy={proxy!r} is invalid: must be one of {', '.join(PROXIES)}")
    return pool_proxies(proxy, gates, pool, num_experts, homes)


def recompute(result: SimulationResult, P: int, tau: float, proxy: str = "gate", round: int | None = None,
              layer: int = 0) -> tuple[torch.Tensor, dict]:
    """A (M, M) of Eq. 8-10 on the saved gates of a refresh, and its ``matrix_diagnostics``."""
    gates, pool = saved_gates(result, round, layer)
    E, homes = result.config.num_experts, home_domains(result)
    A = sparse_aggregation_matrix(proxies_of(proxy, gates, pool, E, homes), P, tau,
                                  result.config.min_correlation).to_dense()   # as the run computes it
    return A, matrix_diagnostics(A, pool, E, homes)


def domain_order(pool: list[int], num_experts: int, clients: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """(perm (M,), labels, groups): the pool's pairs sorted by their client's home domain (then client, slot),
    each labelled ``"client:slot"``, and the home-domain name of each, in the sorted order."""
    table = clients.set_index("client")
    key = [(int(table.loc[k, "home_domain"]), k, e) for k in pool for e in range(num_experts)]   # (M,) in A's order
    perm = np.array(sorted(range(len(key)), key=key.__getitem__))
    return (perm, [f"{key[i][1]}:{key[i][2]}" for i in perm],
            [str(table.loc[key[i][1], "home_domain_name"]) for i in perm])


def plot_matrix_by_domain(A, pool: list[int], num_experts: int, clients: pd.DataFrame, title: str = "A",
                          cmap: str = "rocket_r"):
    """viz.plot_matrix of A (or R) with rows and columns sorted by home domain, domain blocks outlined."""
    perm, labels, groups = domain_order(pool, num_experts, clients)
    A = np.asarray(A, dtype=float)[np.ix_(perm, perm)]                                          # (M, M) sorted
    return viz.plot_matrix(A, labels, title, groups=groups, cmap=cmap)


def describe(diag: dict) -> str:
    """The diagnostics a title shows: purity against chance, non-zeros per row, self weight."""
    return (f"purity {diag['domain_purity']:.2f} (chance {diag['purity_chance']:.2f}), "
            f"{diag['nnz_per_row']:.1f} nnz/row, self {diag['self_weight']:.2f}")


def purity_sweep(result: SimulationResult, Ps, taus, proxies=PROXIES, round: int | None = None,
                 layer: int = 0) -> pd.DataFrame:
    """One row per (proxy, P, tau): A's diagnostics recomputed on the saved gates of one refresh."""
    rows = []
    for proxy in proxies:
        for P in Ps:
            for tau in taus:
                _, diag = recompute(result, P, tau, proxy, round, layer)
                rows.append({"proxy": proxy, "P": P, "tau": tau, **diag})
    return pd.DataFrame(rows)


def matrix_explorer(result: SimulationResult, round: int | None = None, layer: int = 0) -> Explorer:
    """P, tau and proxy -> A recomputed on the saved gates of a refresh (default the last), sorted by domain.

    The title gives A's domain purity against chance; the df (the sorted A) carries every diagnostic in
    ``df.attrs["diagnostics"]``."""
    gates, pool = saved_gates(result, round, layer)
    E, M = result.config.num_experts, gates.shape[0]
    round = refresh_rounds(result, layer)[-1] if round is None else round
    controls = {
        "P": widgets.IntSlider(value=min(result.config.P, M - 1), min=0, max=M - 1, description="P"),
        "tau": widgets.FloatLogSlider(value=result.config.tau, base=10, min=-2, max=1, step=0.1, description="tau"),
        "proxy": widgets.Dropdown(options=list(PROXIES), description="proxy",
                                  value=result.config.proxy if result.config.proxy in PROXIES else "gate"),
    }

    def plot(P: int, tau: float, proxy: str):
        A, diag = recompute(result, P, tau, proxy, round, layer)
        fig, ax, df = plot_matrix_by_domain(A, pool, E, result.clients,
                                            f"A ({proxy}, P={P}, tau={tau:.3g}, round {round})\n{describe(diag)}")
        df.attrs["diagnostics"] = diag
        return fig, ax, df

    return Explorer(plot, controls, "FedMoE-DA's aggregation matrix A, recomputed on the run's uploaded gates")


__all__ = ["PROXIES", "refresh_rounds", "saved_gates", "home_domains", "proxies_of", "recompute", "domain_order",
           "plot_matrix_by_domain", "describe", "purity_sweep", "matrix_explorer"]
