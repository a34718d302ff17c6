"""``log.jsonl``, a run's log: one JSON line of mean losses and throughput every ``log_every`` steps."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class RunLog:
    """Mean loss and throughput since the last line of ``log.jsonl`` (``path = None``: compute, write nothing),
    and the training time of the run, which a resumed run continues."""

    def __init__(self, path: Path | None, step: int, images_per_step: int, seconds: float = 0.0) -> None:
        """``seconds``: the training time before ``step``, from the checkpoint a resumed run starts from."""
        self.path, self.images_per_step = path, images_per_step
        self.losses: list[list[float]] = []
        self.last_time = time.perf_counter()
        self.start = self.last_time - seconds
        self.last_step = step

    def seconds(self) -> float:
        """Training time so far, across resumes: what ``seconds`` in a line counts."""
        return time.perf_counter() - self.start

    def add(self, losses: list[list[float]]) -> None:
        self.losses += losses

    def write(self, step: int, lr: float) -> dict[str, float]:
        """The line: ``loss`` (and ``adversary_loss`` for two players) is the mean since the last line."""
        now = time.perf_counter()
        means = [sum(column) / len(column) for column in zip(*self.losses, strict=True)]
        record = {
            "step": step,
            "loss": means[0],
            **({"adversary_loss": means[1]} if len(means) > 1 else {}),
            "lr": lr,
            "images_per_sec": self.images_per_step * (step - self.last_step) / max(now - self.last_time, 1e-9),
            "seconds": now - self.start,
        }
        if self.path is not None:
            with open(self.path, "a") as file:
                file.write(json.dumps(record) + "\n")
        self.losses, self.last_time, self.last_step = [], now, step
        return record


def drop_log_lines_after(path: Path | None, step: int) -> None:
    """Remove the lines of ``path`` logged after ``step``: a resumed run takes those steps again."""
    if path is None or not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except json.JSONDecodeError:
        return math.inf  # the half-written last line of a killed run
