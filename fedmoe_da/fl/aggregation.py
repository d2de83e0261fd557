"""Aggregation math: FedAvg, and FedMoE-DA's expert aggregation matrix (Eq. 8-11).

The FedMoE-DA pool is every pair i = (client k, slot e) of one MoE layer, M = N x E
pairs. Pair i has parameters theta_i (expert e of client k) and a proxy pi_i
(row e of client k's gate weight). Proxies that point the same way route the
same inputs, so their experts serve the same data domain.
"""
from __future__ import annotations

import torch
from torch import Tensor

TIE_TOLERANCE = 1e-6
"""Correlations within this of the selection threshold count as ties and are kept (Eq. 9)."""


FEDAVG_CHUNK = 64   # clients stacked at once: at 1,000 clients one stack of a backbone weight is 260 MB


def fedavg(tensors: list[Tensor], weights: list[float] | Tensor) -> Tensor:
    """Weighted mean sum_k w_k x_k / sum_k w_k (weights: usually each client's training-set size): one weighted
    sum over the client dimension per ``FEDAVG_CHUNK`` clients."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    w = (w / w.sum()).to(torch.float32)
    out = None
    for i in range(0, len(tensors), FEDAVG_CHUNK):
        stacked = torch.stack([t.float() for t in tensors[i:i + FEDAVG_CHUNK]])   # (n, ...)
        part = torch.tensordot(w[i:i + FEDAVG_CHUNK], stacked, dims=1)
        out = part if out is None else out + part
    return out.to(tensors[0].dtype)


ROW_BLOCK_ELEMENTS = 2**22   # pool-sized matrices are built this many elements (rows x M) at a time


def row_blocks(M: int) -> list[slice]:
    """Row slices of an (M, M) matrix, each of at most ``ROW_BLOCK_ELEMENTS``: at 1,000 clients x 8 experts
    one fp64 (M, M) matrix is 512 MB, so Eq. 8-10 and the diagnostics work a block of rows at a time."""
    step = max(1, ROW_BLOCK_ELEMENTS // max(M, 1))
    return [slice(r, min(r + step, M)) for r in range(0, M, step)]


def correlation(proxies: Tensor, rows: slice | None = None) -> Tensor:
    """Eq. 8: R_ij = cos(pi_i, pi_j) over the whole pool. proxies (M, d) -> R (M, M), or its ``rows`` (m, M).

    R_ii is 1 by definition (also for an all-zero proxy, which is orthogonal to all others).
    """
    z = torch.nn.functional.normalize(proxies.double(), dim=1)                 # (M, d) unit rows
    rows = rows if rows is not None else slice(0, z.shape[0])
    R = z[rows] @ z.T                                                          # (m, M)
    i = torch.arange(R.shape[0])
    R[i, i + rows.start] = 1.0
    return R


def aggregation_matrix(proxies: Tensor, P: int, tau: float, min_correlation: float | None = None,
                       sparse: bool = False) -> Tensor:
    """The row-stochastic (M, M) matrix A of Eq. 8-10 for proxies (M, d); ``sparse``: as a sparse COO tensor.

    Row i puts weight on the expert itself and its P most correlated experts in
    the pool (intra- and inter-client, any slot), softmax-weighted by R / tau.
    Ties at the threshold are all kept, so a row may hold more than P + 1
    entries. P = 0 gives the identity; P >= M - 1 uses the whole pool.

    ``min_correlation`` (not in the paper; None: Eq. 9 as published) also drops
    every j != i with R_ij <= min_correlation. It exists because with
    degenerate proxies (e.g. orthogonal or all-zero rows) the (P+1)-th largest
    value is a tie at 0 shared by most of the pool, and Eq. 9 then keeps the
    whole pool: every expert becomes the pool average.

    A row holds about P + 1 non-zeros, so the softmax runs over the selected entries only, and the strategy
    keeps A sparse (at 1,000 clients x 8 experts a dense A is 256 MB).
    """
    if P < 0 or tau <= 0:
        raise ValueError(f"P={P}, tau={tau} are invalid: need P >= 0 and tau > 0")
    M = proxies.shape[0]
    parts = []
    for rows in row_blocks(M):                                                 # rows are independent
        if P == 0:                                                             # only the expert itself
            i = torch.arange(rows.start, rows.stop, device=proxies.device)
            parts.append((i, i, torch.ones(len(i), dtype=torch.float32, device=proxies.device)))
            continue
        R = correlation(proxies, rows)                                         # Eq. 8, (m, M)
        # Eq. 9: S_i = { j : R_ij >= (P+1)-th largest value of row i } (row i contains i itself)
        top = R.topk(min(P + 1, M), dim=1).values                              # (m, P+1), largest first
        selected = R >= top[:, -1:] - TIE_TOLERANCE                            # (m, M) bool
        if min_correlation is not None:                                        # the guard, see above
            own = (torch.arange(rows.start, rows.stop, device=R.device)[:, None]
                   == torch.arange(M, device=R.device)[None, :])
            selected &= (R > min_correlation + TIE_TOLERANCE) | own
        # Eq. 10: a_ij = exp(R_ij / tau) / sum_{l in S_i} exp(R_il / tau), 0 outside S_i
        r, c = selected.nonzero(as_tuple=True)                                 # (nnz,) row by row
        e = torch.exp((R[r, c] - top[r, 0]) / tau)                             # minus the row's max: no overflow
        total = torch.zeros(R.shape[0], dtype=e.dtype, device=R.device).index_add_(0, r, e)   # (m,) per row
        parts.append((r + rows.start, c, (e / total[r]).float()))              # rows sum to 1
    r, c, v = (torch.cat(p) for p in zip(*parts)) if parts else (torch.zeros(0, dtype=torch.long),) * 2 + (
        torch.zeros(0),)
    A = torch.sparse_coo_tensor(torch.stack([r, c]), v, (M, M), check_invariants=True).coalesce()
    return A if sparse else A.to_dense()


def aggregate_experts(A: Tensor, thetas: Tensor) -> Tensor:
    """A (M, M) or the (m, M) rows of some pairs; thetas (M, ...) -> (m, ...), from the pre-update thetas."""
    flat = thetas.reshape(thetas.shape[0], -1).float()                         # (M, p)
    # Eq. 11: theta_i <- sum_j a_ij theta_j (synchronous: every theta_j as it was before this sync)
    return (A.float() @ flat).reshape(A.shape[0], *thetas.shape[1:]).to(thetas.dtype)


def drop_absent(weights: Tensor, present: Tensor) -> Tensor:
    """Zero the weights of absent peers and renormalise the row(s); weights (..., M), present (..., M) bool.

    Each FedMoE-DA row holds its own expert (always present), so the sum never vanishes.
    """
    kept = weights * present
    return kept / kept.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- proxies
# The paper's proxy is the gate row. With one gate initialisation shared by all
# clients, same-slot rows keep cosine 0.95-0.99 across all clients whatever their
# domain (measured on the digits, issue 7), so R sees the shared init, not the
# domains. The alternatives below remove what all clients share.

def centre_by_slot(proxies: Tensor, num_experts: int) -> Tensor:
    """Proxies (M, d) of a pool ordered (client, slot) -> each row minus its slot's mean over the pool's clients.

    Removes the part every client shares slot by slot (the common initialisation
    and the common drift), keeping what makes a client's expert different.
    Cosine is scale-free, so R stays in [-1, 1] and tau keeps its meaning.
    """
    M, d = proxies.shape
    by_slot = proxies.reshape(M // num_experts, num_experts, d)                 # (N, E, d)
    return (by_slot - by_slot.mean(dim=0, keepdim=True)).reshape(M, d)


def signature_proxies(proxies: Tensor, num_experts: int) -> Tensor:
    """Proxies (M, d) ordered (client, slot) -> [the client's whole gate, centred by slot, unit norm; one-hot(slot)].

    The client part is a fingerprint of how the client's gate moved away from
    what the pool shares; it is the same for all of a client's experts. The
    slot part keeps experts aligned with the same slot of other clients (all
    clients start from one initialisation, so slot e is the same function
    everywhere at round 0). With both parts of unit norm, R between (k, e) and
    (k', e) is (1 + c_kk') / 2 and between (k, e) and (k', e') is c_kk' / 2, c
    being the cosine of the two client fingerprints: row i's top P are the same
    slot of the clients whose gates moved most like its own. Measured on the
    digit domains (issue 7), the per-row gate proxies match experts of the same
    client or random clients; this one matches clients of the same domain.
    """
    M, d = proxies.shape
    N = M // num_experts
    centred = centre_by_slot(proxies, num_experts).reshape(N, num_experts * d)      # (N, E*d)
    fingerprint = torch.nn.functional.normalize(centred, dim=1).repeat_interleave(num_experts, 0)  # (M, E*d)
    return torch.cat([fingerprint, torch.eye(num_experts).repeat(N, 1)], dim=1)   # (M, E*d + E)


def domain_proxies(home_domains: list[int], num_experts: int, num_domains: int) -> Tensor:
    """The oracle proxy (teaching only: the server never knows domains): [one-hot(home domain), one-hot(slot)].

    For a pool of clients with these home domains -> (N * E, D + E). Same domain and
    slot: R = 1; same domain or same slot: 0.5; neither: 0. Row i's top P are the same
    slot of clients of its own domain first.
    """
    dom = torch.eye(num_domains)[torch.tensor(home_domains)]                   # (N, D)
    N = len(home_domains)
    return torch.cat([dom.repeat_interleave(num_experts, 0), torch.eye(num_experts).repeat(N, 1)], dim=1)


# --------------------------------------------------------------------------- diagnostics
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


def pool_proxies(proxy: str, gates: Tensor, pool: list[int], num_experts: int, home_domains: list[int] | None) -> Tensor:
    """The (M, d') proxies of a pool ordered (client, slot), as ``config.proxy`` names them: ``gates`` (M, d) are
    the pool's uploaded gate rows (``gate``, or their change since initialisation with ``gate_delta``);
    ``gate_centred`` and ``gate_signature`` transform them; ``domain`` is the oracle from the clients' home domains."""
    if proxy == "domain":
        return domain_proxies([home_domains[k] for k in pool], num_experts, max(home_domains) + 1)
    if proxy == "gate_signature":
        return signature_proxies(gates, num_experts)
    return centre_by_slot(gates, num_experts) if proxy == "gate_centred" else gates
