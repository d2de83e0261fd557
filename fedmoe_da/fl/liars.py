"""Peers that lie, for experiments and teaching: a transport hook that changes what a liar *sends*.

A liar trains honestly, but what leaves it is replaced in flight by the
in-process transport's ``tamper`` hook (``transport.InProcessTransport``); its
own model stays honest. The screens that should catch it are in ``robust.py``.

    noise_experts    every expert it sends becomes N(0, 1e3^2) noise  (FedAvg: uploads; FedMoE-DA: P2P fetches)
    scaled_experts   every expert it sends is multiplied by 100
    noise_backbone   its backbone upload becomes N(0, 1e3^2) noise

    result = simulate_with_liars(config.replace(p2p_screen=2.0), liars={0}, attack="noise_experts")
    honest_outcome(result, {0})     # the honest clients' final accuracy; rejections of lies and of honest payloads

``benchmarks/liars.py`` measures every attack against every defence with these.
"""
from __future__ import annotations

import torch

from ..config import ConfigError, ExperimentConfig
from .checkpoint import resumable
from .simulation import simulate
from .summary import SimulationResult
from .transport import InProcessTransport, Payload

ATTACKS = ("noise_experts", "scaled_experts", "noise_backbone")
NOISE_SCALE = 1e3      # std of the noise a liar sends
SCALE = 100.0          # factor of scaled_experts


def liar_hook(liars: set[int], attack: str, seed: int = 0):
    """The tamper hook of a run in which the clients ``liars`` send ``attack`` instead of their parameters.

    The noise comes from one generator seeded with ``seed``, drawn in the order the payloads cross.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} is invalid: must be one of {', '.join(ATTACKS)}")
    gen = torch.Generator().manual_seed(seed)
    kind = "backbone" if attack == "noise_backbone" else "expert"

    def tamper(src: int, dst: int, group: str, payload: Payload) -> Payload:
        if src not in liars or not group.startswith(kind):
            return payload
        if attack == "scaled_experts":
            return {n: SCALE * t for n, t in payload.items()}
        return {n: NOISE_SCALE * torch.randn(t.shape, generator=gen) for n, t in payload.items()}
    return tamper


def liar_label(config: ExperimentConfig, liars: set[int], attack: str) -> str:
    """'fedmoe_da, liars 0 send noise_experts': the run's name when its config has no label."""
    return f"{config.label or config.strategy}, liars {','.join(map(str, sorted(liars)))} send {attack}"


def simulate_with_liars(config: ExperimentConfig, liars: set[int], attack: str) -> SimulationResult:
    """``simulate(config)`` with the clients ``liars`` sending ``attack``; liars empty: an honest run.

    The run's label names the liars and the attack (``liar_label``), so its folder's config.json
    records them and a folder of another run is never read back as this one. With ``config.out``
    set, a finished run of this config in that folder is read back. The liar's noise stream is not
    in a checkpoint, so a liar run cannot resume: it needs ``checkpoint_every=0`` when ``out`` is set.
    """
    liars = set(liars)
    if not liars:
        return simulate(config, resume=resumable(config))
    bad = sorted(k for k in liars if not 0 <= k < config.num_clients)
    if bad:
        raise ValueError(f"liars={sorted(liars)} is invalid: client {bad[0]} is not one of 0..{config.num_clients - 1}")
    if config.out and config.checkpoint_every:
        raise ConfigError(f"config.checkpoint_every={config.checkpoint_every} is invalid for a run with liars: "
                          "must be 0 (the liar's noise is not in the checkpoint, so it could not resume)")
    config = config.replace(label=liar_label(config, liars, attack))
    transport = InProcessTransport(tamper=liar_hook(liars, attack, config.seed))
    return simulate(config, transport, resume=resumable(config))


def honest_outcome(result: SimulationResult, liars: set[int]) -> dict:
    """What the liars cost: the honest clients' mean personalised accuracy at the final round, and how many
    payloads were rejected from liars and from honest clients (dropouts and discarded local updates aside)."""
    h, rej = result.history, result.rejections
    final = h[(h["round"] == h["round"].max()) & ~h["client"].isin(liars)]
    sent = rej[~rej["channel"].isin(("dropout", "local"))]
    return {"honest_acc": float(final["personalised_accuracy"].mean()),
            "rejected_from_liars": int(sent["src"].isin(liars).sum()),
            "rejected_from_honest": int((~sent["src"].isin(liars)).sum())}
