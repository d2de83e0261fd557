"""How domain-aware a FedMoE-DA aggregation matrix A is: domain purity and its chance rate, self-weight,
same-slot and intra-client shares, non-zeros per row (docs/ARCHITECTURE.md §7)."""
from __future__ import annotations

import torch
from torch import Tensor


def entries(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A dense or sparse (COO) matrix's non-zeros as (rows, cols, values), row by row."""
    if A.is_sparse:
        A = A.coalesce()
        (r, c), v = A.indices(), A.values()
        keep = v != 0
        return r[keep], c[keep], v[keep]
    r, c = A.nonzero(as_tuple=True)
    return r, c, A[r, c]


def matrix_diagnostics(A: Tensor, pool: list[int], num_experts: int, home_domains: list[int] | None) -> dict:
    """How domain-aware one layer's A (dense or sparse) is, over a pool ordered (client, slot).

    * domain_purity: of each row's inter-client weight, the share that goes to
      clients with the row's home domain, averaged over rows that have any;
    * purity_chance: the same share if that weight were spread evenly over the
      other pool clients (what a domain-blind A gets);
    * self_weight: mean a_ii; same_slot_share: of the off-diagonal weight, the
      share on the same slot of other clients; intra_client_share: the share on
      other slots of the same client; nnz_per_row: mean non-zeros per row.

    Per-row sums over A's non-zeros (O(nnz + M), not O(M^2)).
    """
    M = A.shape[0]
    client = torch.tensor(pool).repeat_interleave(num_experts)                  # (M,) client of each pair
    slot = torch.arange(num_experts).repeat(len(pool))                          # (M,)
    r, c, a = (t.cpu() for t in entries(A))
    a = a.double()

    def per_row(where: Tensor) -> Tensor:                                      # (M,) sum of a over row's entries
        return torch.zeros(M, dtype=torch.float64).index_add_(0, r[where], a[where])

    same_client, eye = client[r] == client[c], r == c
    off = ~eye
    v = {"diag": per_row(eye), "off": per_row(off), "same_slot": per_row((slot[r] == slot[c]) & ~same_client),
         "intra": per_row(same_client & off), "inter": per_row(~same_client),
         "nnz": torch.zeros(M, dtype=torch.float64).index_add_(0, r, (a > 0).double())}
    out = {
        "self_weight": float(v["diag"].mean()),
        "same_slot_share": _share(v["same_slot"], v["off"]),
        "intra_client_share": _share(v["intra"], v["off"]),
        "nnz_per_row": float(v["nnz"].mean()),
        "domain_purity": float("nan"), "purity_chance": float("nan"),
    }
    if home_domains is not None and len(pool) > 1:
        pool_home = torch.tensor([home_domains[k] for k in pool])                  # (clients,)
        home = pool_home.repeat_interleave(num_experts)                             # (M,)
        out["domain_purity"] = _share(per_row((home[r] == home[c]) & ~same_client), v["inter"])
        # chance: the other pool clients of the row's home domain over all other pool clients
        clients_per_home = torch.bincount(pool_home)
        chance = (clients_per_home[home] - 1).double() / (len(pool) - 1)        # (M,)
        has = v["inter"] > 0                                                    # the rows purity averages over
        out["purity_chance"] = float(chance[has].mean()) if bool(has.any()) else float("nan")
    return out


def _share(part: Tensor, totals: Tensor) -> float:
    """Mean over rows with a positive total of (part / total), per-row sums (M,); NaN if no row has any."""
    has = totals > 0
    if not bool(has.any()):
        return float("nan")
    return float((part[has] / totals[has]).mean())
