"""Peers and clients that lie: screens on what a party receives (the robust server aggregates they pair with
are ``server_aggregation.py``).

A screen looks at a payload that arrived intact (right shapes, finite: see
``transport.payload_problem``) and says why it is implausible, or None. The
transport applies it where the payload is received, and a screened-out payload
is recorded exactly like a NaN one: its ledger row has accepted=False and
``ledger.rejections`` gets (round, src, dst, channel, group, reason).

* ``expert_screen`` (a client, on a peer's expert, FedMoE-DA's P2P fetch): the
  receiver compares the expert with its *own* expert of the same slot, which
  it trusts. All clients start from one initialisation and Eq. 11 keeps pulling
  same-slot experts together, so an honest peer's expert is within a fraction
  of the receiver's own expert's norm; a noise or a scaled expert is many
  times away. Reject if ||theta_recv - theta_own|| > c * max(||theta_own||, eps).
* ``upload_outliers`` (the server, on the round's uploads of one group): the
  server trusts no client, so its reference is the coordinate-wise median of
  the uploads, med, which fewer than half of them cannot move far. Reject if
  ||u_k - med|| > c * ||med||: one round of honest local training moves a
  group by a fraction of its norm, a noise or scaled upload by many times it.
  Needs at least 3 uploads (with 2, both are equally far from their median).

  Not the robust z-score ||u_k - med|| > c * median_j ||u_j - med||: MoE
  updates are sparse. An expert that most clients never route to comes back
  unchanged from most of them, the median distance is 0, and the few honest
  clients that did train it are "outliers". Measured on the digits (10 and 20
  clients, FedAvg, 10 rounds): the median distance was 0 for a third of the
  (group, round) pairs, and c = 3 would have rejected 31 and 51 honest
  uploads; the largest honest ||u_k - med|| / ||med|| was 0.63.

Both screens have one shape: distance to a trusted reference, in units of
the reference's norm. What passes has bounded influence: a liar's expert
(weight a_ij <= 1) or upload (share w_k of the mean) moves the result by at
most a_ij * c * ||own|| or w_k * c * ||med||.

Norms are over the whole payload (every tensor of the group flattened and
concatenated), in float64.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .server_aggregation import coordinate_median

Payload = dict[str, Tensor]
EPS = 1e-8
"""Floor of the receiver's own expert norm in ``expert_screen`` (an all-zero own expert)."""


def flatten(payload: Payload) -> Tensor:
    """Every tensor of a payload, by name, flattened and concatenated in float64: (p,)."""
    return torch.cat([payload[n].reshape(-1).double() for n in sorted(payload)])


def expert_screen(received: Payload, own: Payload, c: float, eps: float = EPS) -> str | None:
    """Why a peer's expert is implausible next to the receiver's own expert of that slot, or None.

    Rejected if ||received - own|| > c * max(||own||, eps), norms over the whole expert (``expert_screens``
    of one row).
    """
    return expert_screens({n: t[None] for n, t in received.items()}, {n: t[None] for n, t in own.items()}, c, eps)[0]


def expert_screens(received: Payload, own: Payload, c: float, eps: float = EPS) -> list[str | None]:
    """``expert_screen`` of many experts at once: ``received`` and ``own`` map the same names to (R, ...) stacks;
    row r is judged against own row r (in float64, as ``flatten``)."""
    names = sorted(own)
    own_flat = torch.cat([own[n].flatten(1).double() for n in names], 1)                            # (R, D)
    dist = torch.linalg.vector_norm(torch.cat([received[n].flatten(1).double() for n in names], 1) - own_flat, dim=1)
    norm = torch.linalg.vector_norm(own_flat, dim=1)
    out: list[str | None] = []
    for d, o in zip(dist.tolist(), norm.tolist()):
        bound = c * max(o, eps)
        out.append(f"p2p screen: ||theta - theta_own|| = {d:.4g} > {c:g} x ||theta_own|| = {bound:.4g}"
                   if d > bound else None)
    return out


def upload_outliers(payloads: dict[int, Payload], c: float) -> dict[int, str]:
    """The uploads (client -> payload, one group) the server rejects, with the reason of each.

    With med the coordinate-wise median of the uploads, upload k is rejected if
    ||u_k - med|| > c * ||med||. Fewer than 3 uploads: none.
    """
    if len(payloads) < 3:
        return {}
    clients = list(payloads)
    X = torch.stack([flatten(payloads[k]) for k in clients])                  # (n, p)
    med = coordinate_median(list(X))                                           # (p,)
    dist = (X - med).norm(dim=1)                                               # (n,)
    bound = c * float(med.norm())
    return {k: f"upload screen: ||u - median|| = {float(d):.4g} > {c:g} x ||median|| = {bound:.4g}"
            for k, d in zip(clients, dist) if float(d) > bound}
