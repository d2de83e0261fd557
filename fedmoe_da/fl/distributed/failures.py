"""Failure diagnosis: which rank failed, where, and how to go on, in one line (docs/ARCHITECTURE.md §6).

A rank that dies makes the others stop with one line on stderr naming it (whichever survivor reports first;
the others stay quiet): on one host a rank is dead if its process is gone, on another if it does not answer
within PROBE_SECONDS. A rank that hangs is named by its partner after ``dist_timeout``.
"""
from __future__ import annotations

import os
import socket
import time

PROBE_SECONDS = 2.0   # how long the reporting survivor waits for the others to say they are alive (a hung rank,
#                       or a dead one on another host, never does)


class RankFailure(RuntimeError):
    """A collective or point-to-point operation failed: a peer died, hung past the timeout, or never joined."""

    def __init__(self, where: str, partner: int | None, cause: BaseException) -> None:
        first = (str(cause).splitlines() or [type(cause).__name__])[0]
        super().__init__(f"{where}: {first}")
        self.where, self.partner, self.cause = where, partner, first


class Terminated(BaseException):
    """SIGTERM (torchrun stops the survivors when a rank dies, before restarting or giving up)."""


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` on this host runs (a zombie is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def silent_ranks(ranks) -> tuple[list[int], list[int]]:
    """(dead, silent): ranks whose process is gone (on this host) or that never joined; and, if none is dead,
    the ranks that do not say they are alive within PROBE_SECONDS (hung, or dead on another host)."""
    store = ranks.store
    if store is None:
        return [], []
    host, dead, others = socket.gethostname(), [], []
    try:
        for r in range(ranks.world):
            if r == ranks.rank or store.check([f"alive/{r}"]):   # a survivor (it may have exited since)
                continue
            if not store.check([f"proc/{r}"]):
                dead.append(r)          # never joined
                continue
            their_host, pid = store.get(f"proc/{r}").decode().split()
            if their_host == host and not pid_alive(int(pid)):
                dead.append(r)
            else:
                others.append(r)
        if dead:
            return dead, []
        deadline = time.monotonic() + PROBE_SECONDS
        while others and time.monotonic() < deadline:
            others = [r for r in others if not store.check([f"alive/{r}"])]
            time.sleep(0.05)
    except Exception:   # the store itself is gone: say what we know
        return dead, []
    return dead, others


def claim_report(ranks) -> bool:
    """Say this rank is alive; True for the first rank to ask (one error line per failure, not per survivor)."""
    try:
        ranks.store.set(f"alive/{ranks.rank}", "1")
        return ranks.store.add("reported", 1) == 1
    except Exception:
        return True


def failure_line(ranks, hosted, exc: BaseException, out: str | None) -> str:
    """The one line that says which rank failed, where, and how to go on (``hosted(rank)``: what it hosts)."""
    dead, silent = silent_ranks(ranks)
    where = exc.where if isinstance(exc, RankFailure) else ranks.where
    timeout = f"dist_timeout={ranks.timeout:g}s"
    if dead:
        who = "; ".join(f"rank {r} ({hosted(r)})" for r in dead)
        what = f"{who} died" if len(dead) == 1 else f"ranks died: {who}"
    elif silent:
        who = "; ".join(f"rank {r} ({hosted(r)})" for r in silent)
        what = f"{who} stopped answering (no reply within {timeout})"
    elif isinstance(exc, RankFailure) and exc.partner is not None:
        what = f"rank {exc.partner} ({hosted(exc.partner)}) did not answer within {timeout} ({exc.cause})"
    elif isinstance(exc, RankFailure):
        what = f"a rank did not answer within {timeout} ({exc.cause})"
    else:
        what = "the launcher stopped this rank (SIGTERM)"
    return f"fedmoe-da: error: {what} during {where}; the run stopped.{resume_hint(out)}"


def resume_hint(out: str | None) -> str:
    if not out:
        return ""
    from ..checkpoint import saved_round

    try:
        done = saved_round(out)
    except Exception:
        done = None
    if done is None:
        return " No checkpoint was saved yet."
    return (f" Round {done} is saved in {out}: torchrun --max-restarts resumes from it, as does "
            f"torchrun ... -m fedmoe_da run --resume {out}.")
