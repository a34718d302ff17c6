"""Training killed outright (SIGKILL) at random moments, some of them inside a checkpoint write, loses nothing:
the checkpoint on disk is always whole, and the run resumed after every kill ends bit for bit where an
uninterrupted run ends."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from identical import assert_same_checkpoint

from diffbook.train import load_checkpoint

# A wide network, so that a checkpoint write lasts long enough (tens of ms) to be caught in the act.
COMMAND = [
    sys.executable, "-m", "diffbook", "train", "--config", "toy/edm", "train.steps=300", "train.batch_size=64",
    "train.checkpoint_every=10", "train.log_every=10", "network.overrides.hidden=512",
]  # fmt: skip
KILLS = 6


def _start(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*COMMAND, "--run-dir", str(run_dir)], env=env, stderr=subprocess.PIPE)


def _kill_when(process: subprocess.Popen, moment, timeout: float = 60.0) -> bool:
    """SIGKILL ``process`` as soon as ``moment()`` is true; False when it finished first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if moment():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.0005)
    process.wait()
    return False


def _logged_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "log.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or its last line half written
        return 0


def _past_step(run_dir: Path, step: int, jitter: float):
    """A moment: the log has reached ``step``, and ``jitter`` seconds more have passed."""

    def moment() -> bool:
        if _logged_step(run_dir) < step:
            return False
        time.sleep(jitter)
        return True

    return moment


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX only")
def test_sigkill_at_random_moments_and_mid_write_loses_nothing(tmp_path):
    run_dir, rng = tmp_path / "killed", random.Random(0)
    checkpoint, temporary = run_dir / "checkpoint.pt", run_dir / ".checkpoint.pt.tmp"
    mid_write, steps_seen = 0, []
    for kill in range(KILLS):
        process = _start(run_dir)
        if kill % 2:  # inside a write: the temporary file exists only while a checkpoint is being written
            killed = _kill_when(process, temporary.exists)
            mid_write += killed
        else:  # at a random moment of a random step, 15 to 60 steps after the run's last log line
            moment = _past_step(run_dir, _logged_step(run_dir) + rng.randint(15, 60), rng.uniform(0.0, 0.05))
            killed = _kill_when(process, moment)
        assert killed, "the run finished before it could be killed; make it longer"
        if checkpoint.exists():  # whole after every kill: it loads, with finite weights
            state = load_checkpoint(checkpoint)
            assert all(value.isfinite().all() for value in state["model"].values())
            steps_seen.append(state["step"])
    assert mid_write >= 2 and steps_seen == sorted(steps_seen) and steps_seen[-1] > 0

    finished = _start(run_dir)
    _, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err.decode()[-2000:]
    assert f"resuming from step {steps_seen[-1]} of 300" in err.decode()
    straight = _start(tmp_path / "straight")
    assert straight.wait(timeout=300) == 0
    assert_same_checkpoint(load_checkpoint(checkpoint), load_checkpoint(tmp_path / "straight" / "checkpoint.pt"))
