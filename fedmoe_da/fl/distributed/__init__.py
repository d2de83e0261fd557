"""The torch.distributed runner: the same strategies, with every payload between two ranks really sent
(docs/ARCHITECTURE.md §5, §6). One idea per module:

- ``wire``: a payload as one buffer (``pack``/``unpack``), which payloads are control (``is_control``);
- ``messages``: the process group and the messages between ranks (``Ranks``);
- ``transport``: the transport skeleton with real messages (``DistributedTransport``);
- ``placement``: which rank hosts what (``rank_of``, ``TorchrunPlacement``);
- ``folders``: the run folder seen from each rank;
- ``failures``: which rank failed, in one line; ``faults``: ``FEDMOE_DA_KILL`` (tests);
- ``launch``: the entry point under torchrun (``launched``, ``main``).

Same seed, same history: on CPU the run folder's history.csv and ledger.csv are identical to the in-process
run's (every number is computed by the same code on the same inputs in the same order; nothing is summed
across ranks). The ledger counts what the strategies send; on the wire come on top each payload's header,
the outcome broadcasts, and per round the server state to every client rank and the history rows.
"""
from .failures import RankFailure, Terminated
from .faults import KILL_ENV
from .launch import launched, main
from .placement import TorchrunPlacement, clients_text, party_name, rank_of
from .transport import DistributedTransport
from .wire import is_control, pack, unpack

__all__ = ["RankFailure", "Terminated", "KILL_ENV", "launched", "main", "TorchrunPlacement", "clients_text",
           "party_name", "rank_of", "DistributedTransport", "is_control", "pack", "unpack"]
