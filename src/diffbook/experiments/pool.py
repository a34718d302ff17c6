"""Running many trainings: in this process one after another, or ``jobs`` at a time in worker processes of one
thread each, a task starting only once the task it depends on (the model it fine-tunes) has finished.

Small models use a core far better as one process each than by sharing one process's threads. Workers are
spawned, not forked: forking a process that has run torch's threads can hang.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

import torch

from diffbook.runtime.progress import progress_bar

Task = TypeVar("Task", bound=Hashable)


def run_tasks(
    tasks: Sequence[Task],
    work: Callable[[Task, bool], Any],
    jobs: int = 1,
    progress: bool = True,
    desc: str = "runs",
    depends_on: Callable[[Task], Task | None] = lambda task: None,
) -> list[Any]:
    """``work(task, progress)`` for every task, each after the task it ``depends_on``; results in task order.

    ``work`` must be a module-level function (workers import it). With ``jobs > 1`` no more tasks are in flight
    than there are workers, so a killed driver leaves no queue for its workers to go on with.
    """
    results: dict[Task, Any] = {}
    with progress_bar(range(len(tasks)), desc=f"{desc} ({len(tasks)})", enabled=progress) as bar:
        if jobs <= 1:
            for task in sorted(tasks, key=lambda t: _depth(t, depends_on)):  # stable: the given order otherwise
                results[task] = work(task, progress)
                bar.update()
            return [results[task] for task in tasks]
        context = multiprocessing.get_context("spawn")
        waiting, running = list(tasks), dict[Future, Task]()
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            while waiting or running:
                ready = [t for t in waiting if depends_on(t) is None or depends_on(t) in results]
                if not ready and not running:
                    raise ValueError(f"{len(waiting)} task(s) depend on tasks that are not in the list")
                for task in ready[: jobs - len(running)]:
                    waiting.remove(task)
                    running[pool.submit(work, task, False)] = task
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    results[running.pop(future)] = future.result()
                    bar.update()
    return [results[task] for task in tasks]


def _depth(task: Any, depends_on: Callable[[Any], Any]) -> int:
    parent = depends_on(task)
    return 0 if parent is None else 1 + _depth(parent, depends_on)
