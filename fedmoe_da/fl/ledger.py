"""The communication ledger: one row per transfer, one per rejection, kept in compact columns.

Each transfer is a row (round, src, dst, channel, group, numel, bytes,
accepted); ``numel`` and ``bytes`` come from the payload's shapes and dtypes
(``payload_size``), never from its values. A rejection is a row (round, src,
dst, channel, group, reason). Rows are staged as tuples of ints and frozen
every ``BLOCK`` rows (or when read) into one numpy array per column: int32
round/src/dst, int64 numel/bytes, bool accepted, and strings (channel, group,
reason) as small integer codes into a per-column table. A transfer row takes
34 bytes, so a 1,000-client run's ledger stays small over hundreds of rounds,
and ``to_frame(start)`` reads only the blocks from ``start`` on (the runner
appends each round's rows to the run folder).
"""
from __future__ import annotations

import bisect

import numpy as np
import pandas as pd
from torch import Tensor

CHANNELS = ("server-up", "server-down", "p2p")
LEDGER_COLUMNS = ["round", "src", "dst", "channel", "group", "numel", "bytes", "accepted"]
REJECTION_COLUMNS = ["round", "src", "dst", "channel", "group", "reason"]
BLOCK = 8192   # rows staged as tuples before they are frozen into one numpy array per column


def payload_size(tensors: dict[str, Tensor]) -> tuple[int, int]:
    """(numel, bytes) of a payload, from its shapes and dtypes: bytes = sum of numel * element size."""
    numel = nbytes = 0
    for t in tensors.values():
        n = t.numel()
        numel += n
        nbytes += n * t.element_size()
    return numel, nbytes


class Codes:
    """A string column's code table: the ledger stores a small integer per row, the frame gets the string back."""

    def __init__(self, dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.index: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, name: str) -> int:
        c = self.index.get(name)
        if c is None:
            c = len(self.names)
            if c > np.iinfo(self.dtype).max:
                raise ValueError(f"{name!r} is one distinct value too many: a ledger column holds at most {c} "
                                 f"({self.dtype} codes)")
            self.index[name] = c
            self.names.append(name)
        return c

    def encode(self, values) -> np.ndarray:
        """Codes of many strings at once."""
        inverse, uniques = pd.factorize(pd.Series(values, dtype=object).astype(str))
        return np.array([self.code(u) for u in uniques], dtype=self.dtype)[inverse]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.array(self.names, dtype=object)[codes]


class Table:
    """Append-only columns. Rows are staged as tuples of ints (strings already coded) and frozen into one numpy
    array per column every ``BLOCK`` rows, or when read; ``frame(start)`` reads only the blocks from ``start``."""

    def __init__(self, columns: dict[str, "np.dtype | Codes"]) -> None:
        self.columns = columns
        self.blocks: list[list[np.ndarray]] = []   # per block: one array per column
        self.starts = [0]                          # the row each block starts at; the last: rows frozen
        self.staged: list[tuple] = []

    def __len__(self) -> int:
        return self.starts[-1] + len(self.staged)

    def store_dtype(self, kind) -> np.dtype:
        return kind.dtype if isinstance(kind, Codes) else np.dtype(kind)

    def append(self, row: tuple) -> None:
        self.staged.append(row)
        if len(self.staged) >= BLOCK:
            self.freeze()

    def freeze(self) -> None:
        if not self.staged:
            return
        rows = np.array(self.staged, dtype=np.int64)   # (rows, columns)
        self.add_block([rows[:, j].astype(self.store_dtype(kind)) for j, kind in enumerate(self.columns.values())])
        self.staged = []

    def add_block(self, arrays: list[np.ndarray]) -> None:
        if len(arrays[0]):
            self.blocks.append(arrays)
            self.starts.append(self.starts[-1] + len(arrays[0]))

    def extend(self, frame: pd.DataFrame) -> None:
        """Append a frame with these columns (strings are coded)."""
        self.freeze()
        self.add_block([kind.encode(frame[name]) if isinstance(kind, Codes)
                        else frame[name].to_numpy().astype(kind) for name, kind in self.columns.items()])

    def frame(self, start: int = 0) -> pd.DataFrame:
        if start < 0:
            raise ValueError(f"start={start} is invalid: must be >= 0")
        self.freeze()
        b = bisect.bisect_right(self.starts, start) - 1   # the block holding row ``start``
        blocks = self.blocks[b:]
        skip = start - self.starts[b] if blocks else 0
        data = {}
        for j, (name, kind) in enumerate(self.columns.items()):
            col = np.concatenate([blk[j] for blk in blocks]) if blocks else np.empty(0, self.store_dtype(kind))
            col = col[skip:]
            data[name] = (kind.decode(col) if isinstance(kind, Codes)       # strings, ints as int64, as before
                          else col if col.dtype == bool else col.astype(np.int64))
        frame = pd.DataFrame(data)   # strings are inferred as such; an empty column needs telling
        return frame if len(frame) else frame.astype({n: str for n, k in self.columns.items() if isinstance(k, Codes)})

    @property
    def nbytes(self) -> int:
        """Bytes held by the frozen column blocks."""
        return sum(a.nbytes for blk in self.blocks for a in blk)


def transfer_table() -> Table:   # 34 bytes a row
    return Table({"round": np.int32, "src": np.int32, "dst": np.int32, "channel": Codes(np.int8),
                  "group": Codes(np.int32), "numel": np.int64, "bytes": np.int64, "accepted": np.bool_})


def rejection_table() -> Table:
    return Table({"round": np.int32, "src": np.int32, "dst": np.int32, "channel": Codes(np.int8),
                  "group": Codes(np.int32), "reason": Codes(np.int32)})


class CommLedger:
    """Rows of every transfer, and of every rejected payload, in columns.

    The rejections also hold what happened at a client without a transfer: channel ``local`` (the simulator
    discarded a non-finite local update) and ``dropout`` (a participant dropped after local training and sent
    nothing: ``Strategy.answering``). ``len(ledger)`` counts the transfers, ``num_rejections`` the rejections.
    """

    def __init__(self) -> None:
        self.rows, self.rejected = transfer_table(), rejection_table()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_rejections(self) -> int:
        return len(self.rejected)

    def record(self, rnd: int, src: int, dst: int, channel: str, group: str, tensors: dict[str, Tensor],
               accepted: bool = True) -> None:
        """A transfer of ``tensors`` (sized by ``payload_size``)."""
        self.add(rnd, src, dst, channel, group, *payload_size(tensors), accepted)

    def add(self, rnd: int, src: int, dst: int, channel: str, group: str, numel: int, nbytes: int,
            accepted: bool = True) -> None:
        """A transfer of ``numel`` elements in ``nbytes`` bytes."""
        if channel not in CHANNELS:
            raise ValueError(f"channel={channel!r} is invalid: must be one of {', '.join(CHANNELS)}")
        c = self.rows.columns
        self.rows.append((rnd, src, dst, c["channel"].code(channel), c["group"].code(group), numel, nbytes,
                          bool(accepted)))

    def reject(self, rnd: int, src: int, dst: int, channel: str, group: str, reason: str) -> None:
        c = self.rejected.columns
        self.rejected.append((rnd, src, dst, c["channel"].code(channel), c["group"].code(group),
                              c["reason"].code(reason)))

    def to_frame(self, start: int = 0) -> pd.DataFrame:
        """The transfers from row ``start`` on (all by default)."""
        return self.rows.frame(start)

    def rejections(self, start: int = 0) -> pd.DataFrame:
        """The rejections from row ``start`` on (all by default)."""
        return self.rejected.frame(start)

    def restore(self, rows: pd.DataFrame, rejections: pd.DataFrame) -> None:
        """Start over from tables as ``to_frame()`` and ``rejections()`` give them (a resumed run folder's)."""
        self.rows, self.rejected = transfer_table(), rejection_table()
        for table, frame in ((self.rows, rows), (self.rejected, rejections)):
            if len(frame):
                table.extend(frame)

    @property
    def nbytes(self) -> int:
        """Bytes the ledger's frozen columns hold (rows still staged since the last read not counted)."""
        return self.rows.nbytes + self.rejected.nbytes
