"""The run pool (docs/ARCHITECTURE.md §10): independent runs in worker processes, one torch thread each.

    tasks = [Task("fedavg seed 0", run_one, (config,), context="config: runs/compare/fedavg/seed0/config.json")]
    results = run_pool(tasks, jobs)     # in task order; PoolFailed at the end if any task failed

``jobs`` workers (``--jobs N``; default ``usable_cores()``) run the tasks; ``jobs=1``
runs them one after another in this process, as a plain loop would. Workers
are started with the ``spawn`` context: forking a process whose torch already
started its thread pools can deadlock. Each worker sets one torch thread.

A task that raises is named in one line (its name, its context, the error's
last line) and the others go on; ``PoolFailed`` lists every failure once all
have ended. One tqdm bar counts the tasks. Ctrl-C (SIGINT) reaches this
process only (workers ignore it): the workers are terminated, which leaves
each unfinished run folder at its last checkpoint, and KeyboardInterrupt goes
on up. Tasks whose work is already done are the caller's to skip.

Notebooks already run in their own kernel processes: the figures command
gives them ``processes=False`` (threads, same failure lines and bar).
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from tqdm.auto import tqdm

JOBS_HELP = "runs at once, each in a worker process with one torch thread; 1 runs them in this process"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), the default number of workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows: no affinity
        return os.cpu_count() or 1


def parse_jobs(text: str | int) -> int:
    """``--jobs``: an integer >= 1; anything else is a ValueError that names the allowed values."""
    try:
        jobs = int(text) if not isinstance(text, bool) else None
    except (TypeError, ValueError):
        jobs = None
    if jobs is None or jobs < 1 or str(text).strip() not in (str(jobs), f"+{jobs}"):
        raise ValueError(f"{text!r} is invalid: must be an integer >= 1 (default: the {usable_cores()} "
                         "usable cores)")
    return jobs


def jobs_option(text: str) -> int:
    """``parse_jobs`` for a command line: its ValueError names the flag."""
    try:
        return parse_jobs(text)
    except ValueError as exc:
        raise ValueError(f"--jobs {exc}") from None


@dataclass(frozen=True)
class Task:
    """One independent job: ``fn(*args)`` (module-level, so a worker can import it), named for the bar and errors."""
    name: str                 # which run, e.g. "fedavg seed 0"
    fn: Callable[..., Any]
    args: tuple = ()
    context: str = ""         # where to look, e.g. its config file; appended to its failure line


class TaskFailed(Exception):
    """A task's own account of what went wrong: its failure line is '<name>: <this message>', as is."""


class PoolFailed(Exception):
    """Some tasks failed (every other task ran to its end); ``failures``: one line each, ``results``: None there."""

    def __init__(self, failures: list[str], results: list[Any]) -> None:
        super().__init__(f"{len(failures)} of {len(results)} runs failed:\n" + "\n".join(failures))
        self.failures, self.results = failures, results


def failure_line(task: Task, exc: BaseException) -> str:
    """'<name>: failed (<the error's last line>); <context>', or '<name>: <message>' for a TaskFailed."""
    if isinstance(exc, TaskFailed):
        return f"{task.name}: {exc}"
    lines = str(exc).strip().splitlines()
    last = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
    return f"{task.name}: failed ({last})" + (f"; {task.context}" if task.context else "")


def _start_worker() -> None:
    """In each worker: leave Ctrl-C to the parent (it terminates the workers), one torch thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)


def _call(task: Task) -> tuple[bool, Any]:
    """(True, result) or (False, failure line): a worker's exception comes back as its line, not as a pickle."""
    try:
        return True, task.fn(*task.args)
    except Exception as exc:
        return False, failure_line(task, exc)


def run_pool(tasks: Sequence[Task], jobs: int, processes: bool = True, progress: bool = True, desc: str = "runs",
             on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Run every task (``jobs`` at once); their results in task order. ``on_result(i, result)`` runs here, in
    this process, as each task ends. Raises PoolFailed once all have ended if any failed."""
    jobs = parse_jobs(jobs)
    results: list[Any] = [None] * len(tasks)
    failures: list[tuple[int, str]] = []   # (task index, line)
    bar = tqdm(total=len(tasks), desc=desc, unit="run", disable=not progress or not tasks)

    def settle(i: int, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            results[i] = value
            if on_result is not None:
                on_result(i, value)
        else:
            failures.append((i, value))
            tqdm.write(f"failed: {value}")
        bar.update()

    try:
        if jobs == 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                settle(i, _call(task))
        else:
            with _executor(min(jobs, len(tasks)), processes) as pool:
                futures: dict[Future, int] = {pool.submit(_call, t): i for i, t in enumerate(tasks)}
                try:
                    for future in as_completed(futures):
                        settle(futures[future], future.result())
                except BaseException:
                    _stop(pool, futures)
                    raise
    finally:
        bar.close()
    if failures:
        raise PoolFailed([line for _, line in sorted(failures)], results)
    return results


def pool_failures(tasks: Sequence[Task], jobs: int, **options: Any) -> list[str]:
    """``run_pool`` for tasks run for what they write: the failure lines (empty: every task succeeded)."""
    try:
        run_pool(tasks, jobs, **options)
    except PoolFailed as exc:
        return exc.failures
    return []


def _executor(workers: int, processes: bool) -> Executor:
    if processes:
        return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker)
    return ThreadPoolExecutor(workers)


def _stop(pool: Executor, futures: dict[Future, int]) -> None:
    """Interrupted: cancel what has not started and terminate the workers (ProcessPoolExecutor has no public
    way to stop a running task; its worker processes are in ``_processes``)."""
    for future in futures:
        future.cancel()
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
