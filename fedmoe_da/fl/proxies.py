"""Proxies pi_i of a FedMoE-DA pool ordered (client, slot): what Eq. 8 correlates (docs/ARCHITECTURE.md §7).

The paper's proxy is the gate row. With one gate initialisation shared by all
clients, same-slot rows keep cosine 0.95-0.99 across all clients whatever their
domain (measured on the digits, issue 7), so R sees the shared init, not the
domains. The alternatives below remove what all clients share.
"""
from __future__ import annotations

import torch
from torch import Tensor


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


def pool_proxies(proxy: str, gates: Tensor, pool: list[int], num_experts: int,
                 home_domains: list[int] | None) -> Tensor:
    """The (M, d') proxies of a pool ordered (client, slot), as ``config.proxy`` names them: ``gates`` (M, d) are
    the pool's uploaded gate rows (``gate``, or their change since initialisation with ``gate_delta``);
    ``gate_centred`` and ``gate_signature`` transform them; ``domain`` is the oracle from the clients' home domains."""
    if proxy == "domain":
        return domain_proxies([home_domains[k] for k in pool], num_experts, max(home_domains) + 1)
    if proxy == "gate_signature":
        return signature_proxies(gates, num_experts)
    return centre_by_slot(gates, num_experts) if proxy == "gate_centred" else gates
