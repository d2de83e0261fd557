"""FedMoE-DA: every expert aggregated with its P most correlated peers (Eq. 8-11), weights moved peer to peer.

Per MoE layer l, the pool is every (client k, slot e) whose gate the server holds.

* Refresh rounds are 1, 1 + I, 1 + 2I, ...: participants upload their gate
  (server-up, group ``gate[l]``; with ``proxy="gate_delta"`` its change since
  the client's initialisation), and the server builds the proxies
  (``proxy``), then A = Eq. 8-10 over the pool of every client whose gate it
  holds (latest upload), and records A's diagnostics.
* Each participant that does not hold the current A gets its rows
  (server-down, group ``A[l]``: indices + weights); rows are kept until the
  next refresh.
* P2P (every round, or only at refresh rounds with ``sync="refresh"``): a
  participant fetches the distinct remote (peer, slot) experts of its rows
  from peers present this round; absent or rejected peers are dropped and the
  row renormalised (its own expert is always there); then Eq. 11 from the
  experts as they were after local training (synchronous). With
  ``p2p_screen`` = c, the receiver also rejects an expert farther than
  c x ||own|| from its own expert of that slot (``robust.expert_screen``):
  a rejected expert is dropped like an absent peer's. A participant that
  joined after the last refresh has no rows yet and keeps its experts.
* The backbone (and a ViT's head) goes through the server as in FedAvg
  (``fedmoe_backbone="server"``) or never leaves the client (``"local"``).
"""
from __future__ import annotations

import torch

from ..models.names import EXPERT, GATE, expert_group, gate_group, group_kind, matrix_group, pool_key, tensor_key
from .aggregation_scaled import aggregate_split, drop_absent, sparse_aggregation_matrix
from .diagnostics import matrix_diagnostics
from .p2p import ClientRows, fetch_plan, rows_for_client
from .proxies import pool_proxies
from .robust import expert_screens
from .state import read_group
from .strategy import Round, Strategy
from .transport import SERVER, Stacked

P2P_CHUNK = 64   # receivers whose fetches and Eq. 11 run together: their received experts are what P2P holds


class FedMoEDA(Strategy):
    name = "fedmoe_da"

    def __init__(self, config, groups, template, num_train, home_domains=None) -> None:
        self.channels = {"backbone": config.fedmoe_backbone, "head": config.fedmoe_backbone,
                         "gate": "local", "expert": "p2p"}
        super().__init__(config, groups, template, num_train, home_domains)
        self.num_layers = sum(1 for g in groups if group_kind(g) == GATE)
        self.E = template[groups[gate_group(0)][0].key].shape[0]                # experts per layer
        self.gate_keys = [groups[gate_group(layer)][0].key for layer in range(self.num_layers)]
        self.initial_gates = [{k: template[key] for k in range(len(num_train))} for key in self.gate_keys]
        self.server_gates: list[dict[int, torch.Tensor]] = [{} for _ in range(self.num_layers)]
        self.A: list[torch.Tensor | None] = [None] * self.num_layers
        self.pool: list[list[int]] = [[] for _ in range(self.num_layers)]
        self.version = 0
        self.client_rows: dict[int, list[ClientRows]] = {}
        self._diagnostics: list[dict] = []

    def start(self, states) -> None:
        """Each client remembers its own initial gate (for ``proxy="gate_delta"``)."""
        self.initial_gates = [{k: s[key].clone() for k, s in enumerate(states)} for key in self.gate_keys]

    def is_refresh(self, rnd: int) -> bool:
        return (rnd - 1) % self.config.I == 0

    # ------------------------------------------------------------------ server side: proxies and A
    def upload(self, r: Round):
        rnd, participants, states, transport = r
        uploads = super().upload(r)   # backbone (+ head) if 'server'
        if self.is_refresh(rnd):
            for layer, key in enumerate(self.gate_keys):
                g = gate_group(layer)
                for k in participants:
                    sent = read_group(states[k], self.groups[g])
                    if self.config.proxy == "gate_delta":                # the client sends its gate's change
                        sent = {n: t - self.initial_gates[layer][k] for n, t in sent.items()}
                    got = transport.send(rnd, k, SERVER, "server-up", g, sent, expect=self.shapes[g])
                    if got is not None:
                        self.server_gates[layer][k] = next(iter(got.values())).cpu()   # (E, d); A is built on the CPU
        return uploads

    def proxies(self, layer: int, pool: list[int]) -> torch.Tensor:
        """The (M, d') proxies of layer l's pool, ordered (client, slot), as ``config.proxy`` says."""
        rows = (torch.cat([self.server_gates[layer][k] for k in pool]) if self.config.proxy != "domain"   # (M, d)
                else torch.empty(0))
        return pool_proxies(self.config.proxy, rows, pool, self.E, self.home_domains)

    def aggregate(self, rnd, uploads) -> None:
        super().aggregate(rnd, uploads)
        if not self.is_refresh(rnd):
            return
        self.version = rnd
        for layer in range(self.num_layers):
            pool = sorted(self.server_gates[layer])
            self.pool[layer] = pool
            if not pool:
                continue
            self.A[layer] = sparse_aggregation_matrix(self.proxies(layer, pool), self.config.P,   # (M, M) sparse
                                                      self.config.tau, self.config.min_correlation)
            self._diagnostics.append({"round": rnd, "layer": layer, "pool_clients": len(pool),
                                      **matrix_diagnostics(self.A[layer], pool, self.E, self.home_domains)})

    def diagnostics(self) -> list[dict]:
        rows, self._diagnostics = self._diagnostics, []
        return rows

    def matrices(self) -> dict[str, torch.Tensor]:
        """Per layer: the current A (sparse COO), the uploaded gates it came from (M, d) and the pool's clients, in
        A's row order.

        With the gates, a notebook can recompute A for other P, tau or proxies (matrices/ of the run folder).
        """
        out = {}
        for layer, A in enumerate(self.A):
            if A is not None:
                out[matrix_group(layer)] = A
                out[gate_group(layer)] = torch.cat([self.server_gates[layer][k] for k in self.pool[layer]])   # (M, d)
                out[pool_key(layer)] = torch.tensor(self.pool[layer])
        return out

    def state_dict(self) -> dict:
        """The base state plus A, its pool and version per layer, the server's gates, the initial gates and the
        rows each client holds (a checkpoint: tensors, lists, dicts and ints only)."""
        return {**super().state_dict(), "A": list(self.A), "pool": [list(p) for p in self.pool],
                "version": self.version, "server_gates": [dict(g) for g in self.server_gates],
                "initial_gates": [dict(g) for g in self.initial_gates],
                "client_rows": {k: [{"row": r.row, "peer": r.peer, "slot": r.slot, "weight": r.weight,
                                     "version": r.version} for r in rows] for k, rows in self.client_rows.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.A, self.pool, self.version = list(state["A"]), [list(p) for p in state["pool"]], int(state["version"])
        self.server_gates = [dict(g) for g in state["server_gates"]]
        self.initial_gates = [dict(g) for g in state["initial_gates"]]
        self.client_rows = {k: [ClientRows(**r) for r in rows] for k, rows in state["client_rows"].items()}

    def download(self, r: Round) -> None:
        rnd, participants, states, transport = r
        super().download(r)
        for k in participants:
            held = self.client_rows.get(k)
            if held is not None and held[0].version == self.version:
                continue
            rows = []
            for layer in range(self.num_layers):
                if self.A[layer] is None or k not in self.pool[layer]:
                    break
                r = rows_for_client(self.A[layer], self.pool[layer], k, self.E, self.version)
                got = transport.send(rnd, SERVER, k, "server-down", matrix_group(layer), r.to_payload(),
                                     expect={"index": (len(r.row), 3), "weight": (len(r.row),)})
                if got is None:
                    break
                rows.append(ClientRows.from_payload(got, self.version))
            if len(rows) == self.num_layers:
                self.client_rows[k] = rows

    # ------------------------------------------------------------------ client side: P2P and Eq. 11
    def p2p(self, r: Round) -> None:
        """Participants fetch the remote experts of their rows, then Eq. 11, ``P2P_CHUNK`` receivers at a time.

        Per chunk and layer: one stacked send of every expert the chunk's clients fetch (row t: the t-th fetch,
        in client order; the ledger lists a chunk's fetches layer by layer), then Eq. 11 for those clients as two
        sparse products, over every participant's own
        experts as they were after local training (synchronous) and over the experts that arrived. Memory holds
        one chunk's received experts, not the round's.
        """
        rnd, participants, states, transport = r
        if self.config.sync == "refresh" and not self.is_refresh(rnd):
            return
        synced = [k for k in participants if k in self.client_rows]
        if not synced:
            return
        pos = {k: i for i, k in enumerate(participants)}
        expert_keys = sorted({r.key for g, refs in self.groups.items() if group_kind(g) == EXPERT for r in refs})
        before = {n: torch.stack([states[k][n] for k in participants]) for n in expert_keys}   # (K, E, ...)
        present = set(participants)
        for start in range(0, len(synced), P2P_CHUNK):
            chunk = synced[start:start + P2P_CHUNK]
            for layer in range(self.num_layers):
                fetches = [(k, peer, slot) for k in chunk
                           for peer, slot in fetch_plan(self.client_rows[k][layer], k, present)]
                received, accepted = self._fetch(rnd, layer, fetches, pos, before, transport)
                got = {f: t for t, f in enumerate(fetches) if accepted[t]}    # (k, peer, slot) -> row of received
                self._sync_layer(layer, chunk, pos, before, received, got, states)

    def _fetch(self, rnd, layer: int, fetches: list[tuple[int, int, int]], pos, before, transport):
        """Every fetch (k, peer, slot) of layer l as one stacked send: peer's expert (l, slot) to k."""
        keys = [r.key for r in self.groups[expert_group(layer, 0)]]
        if not fetches:
            return {n: before[n][:0, 0] for n in keys}, []
        ks, peers, slots = (list(v) for v in zip(*fetches))
        slot = torch.tensor(slots)
        peer_pos, k_pos = (torch.tensor([pos[c] for c in v]) for v in (peers, ks))
        batch = Stacked(peers, ks, [expert_group(layer, e) for e in slots],
                        {n: before[n][peer_pos, slot] for n in keys}, key=lambda t, n: tensor_key(n, slots[t]))
        c = self.config.p2p_screen
        screen = None if c is None else (                                     # against k's own expert of that slot
            lambda got, rows: expert_screens(got, {n: before[n][k_pos[rows], slot[rows]] for n in keys}, c))
        return transport.send_stacked(rnd, "p2p", batch, screen)

    def _sync_layer(self, layer: int, chunk: list[int], pos: dict[int, int], before: dict, received: dict,
                    got: dict, states) -> None:
        """Eq. 11 for layer l of the ``chunk``'s clients, from each client's rows with absent (or rejected) peers
        dropped and the row renormalised: W splits into the columns of the participants' own experts
        (participants x E) and those of the experts received (row ``got[(k, peer, slot)]`` of ``received``);
        ``aggregation_scaled.aggregate_split`` applies it."""
        K, E = len(pos), self.E
        blocks = []
        for i, k in enumerate(chunk):
            rows = self.client_rows[k][layer]
            sources = rows.sources()                                              # (S,) (peer, slot)
            cols = [pos[k] * E + slot if peer == k else K * E + got[(k, peer, slot)] if (k, peer, slot) in got
                    else -1 for peer, slot in sources]                            # -1: absent or rejected
            usable = torch.tensor([col >= 0 for col in cols])
            W = drop_absent(rows.weight_matrix(E), usable.expand(E, -1))          # (E, S) renormalised rows
            r, s = W.nonzero(as_tuple=True)
            blocks.append((r + i * E, torch.tensor(cols, dtype=torch.long)[s], W[r, s]))
        r, s, w = (torch.cat(parts) for parts in zip(*blocks))
        keys = [ref.key for ref in self.groups[expert_group(layer, 0)]]
        new = aggregate_split(r, s, w, len(chunk) * E, {n: before[n].flatten(0, 1) for n in keys},   # Eq. 11
                              {n: received[n] for n in keys})                                      # (chunk x E, ...)
        for n in keys:
            for i, k in enumerate(chunk):
                states[k][n] = new[n][i * E:(i + 1) * E]
