"""The Trainer: bitwise resume, atomic checkpoints, NaN stops, run-directory files, and DDP equals one process."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
import torch.distributed as dist
from identical import assert_same_checkpoint
from PIL import Image

from diffbook.diffusion import EDM, Denoiser
from diffbook.nets.mlp import TimeMLP
from diffbook.objectives import DenoisingLoss
from diffbook.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint

# 48 points in batches of 8: six batches per epoch, so a resume at step 10 lands mid-epoch.
DATA = torch.randn(48, 2, generator=torch.Generator().manual_seed(0))


def _model(seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(TimeMLP(hidden=16), EDM())


def _config(**overrides) -> TrainConfig:
    settings = dict(
        steps=20,
        batch_size=8,
        lr=1e-2,
        warmup_steps=4,
        grad_clip=1.0,
        ema_halflife_images=100,
        log_every=5,
        checkpoint_every=7,
    )
    return TrainConfig(**settings | overrides)


class RecordingLoss:
    """The denoising loss, keeping every batch it is given; from call ``nan_from`` on, the loss is NaN."""

    def __init__(self, nan_from: float = math.inf) -> None:
        self.batches: list[torch.Tensor] = []
        self.nan_from = nan_from

    def __call__(self, model: Denoiser, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.batches.append(batch.clone())
        out = DenoisingLoss()(model, batch)
        if len(self.batches) > self.nan_from:
            out["loss"] = out["loss"] * float("nan")
        return out


def _log_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_a_resumed_run_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    straight_loss = RecordingLoss()
    Trainer(_model(), straight_loss, DATA, _config(), tmp_path / "straight", progress=False).fit()

    Trainer(_model(), RecordingLoss(), DATA, _config(steps=10), tmp_path / "resumed", progress=False).fit()
    # Different initial weights and global random state: all that matters must come from the checkpoint.
    resumed_loss = RecordingLoss()
    torch.manual_seed(123)
    resumed = Trainer(_model(seed=1), resumed_loss, DATA, _config(), tmp_path / "resumed", progress=False)
    result = resumed.fit()

    assert len(result.losses) == 10
    for straight_batch, resumed_batch in zip(straight_loss.batches[10:], resumed_loss.batches, strict=True):
        assert torch.equal(straight_batch, resumed_batch)
    # Model, EMA, optimizer moments, random states and data position, all equal; only the wall-clock time
    # differs (that it goes on across the resume is the next test).
    assert_same_checkpoint(
        load_checkpoint(tmp_path / "straight/checkpoint.pt"), load_checkpoint(tmp_path / "resumed/checkpoint.pt")
    )
    assert _log_steps(tmp_path / "resumed") == _log_steps(tmp_path / "straight") == [5, 10, 15, 20]


def test_the_training_time_goes_on_across_a_resume(tmp_path):
    Trainer(_model(), RecordingLoss(), DATA, _config(steps=10), tmp_path, progress=False).fit()
    before = load_checkpoint(tmp_path / "checkpoint.pt")["seconds"]
    Trainer(_model(), RecordingLoss(), DATA, _config(), tmp_path, progress=False).fit()

    seconds = [json.loads(line)["seconds"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert seconds == sorted(seconds) and seconds[2] > before  # the line at step 15 counts the first 10 steps
    assert load_checkpoint(tmp_path / "checkpoint.pt")["seconds"] >= seconds[-1]


def test_a_checkpoint_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "model": {"weight": torch.ones(3)}}, path)

    def save_then_die(obj, file):
        file.write(b"the first bytes of a checkpoint")
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save_then_die)
        with pytest.raises(OSError, match="No space"):
            save_checkpoint({"step": 2, "model": {"weight": torch.zeros(3)}}, path)
    assert load_checkpoint(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]

    # A writer killed outright leaves its temporary file; the next save overwrites it rather than reading it.
    (tmp_path / ".checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    assert load_checkpoint(path)["step"] == 1
    save_checkpoint({"step": 3, "model": {"weight": torch.zeros(3)}}, path)
    assert load_checkpoint(path)["step"] == 3
    assert list(tmp_path.iterdir()) == [path]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _config(steps=20, log_every=2, checkpoint_every=10)
    with pytest.raises(FloatingPointError, match=r"nan at step 12; .*holds the first 10 steps"):
        Trainer(_model(), RecordingLoss(nan_from=12), DATA, config, tmp_path, progress=False).fit()

    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["step"] == 10
    assert all(value.isfinite().all() for value in checkpoint["model"].values())
    # The log had reached step 12; resuming drops the lines the resumed run will write again.
    Trainer(_model(), RecordingLoss(), DATA, _config(steps=14, log_every=2), tmp_path, progress=False).fit()
    assert _log_steps(tmp_path) == [2, 4, 6, 8, 10, 12, 14]


@pytest.mark.parametrize(("check_every", "steps_taken"), [(1, 13), (4, 16)])
def test_a_non_finite_loss_is_caught_between_log_lines_at_the_next_check(tmp_path, check_every, steps_taken):
    # Nothing falls due before step 20, so only the finite check can stop the run early.
    config = _config(steps=40, log_every=20, checkpoint_every=20, finite_check_every=check_every)
    loss = RecordingLoss(nan_from=12)
    with pytest.raises(FloatingPointError, match=r"nan at step 12; lower the learning rate"):
        Trainer(_model(), loss, DATA, config, tmp_path, progress=False).fit()
    assert len(loss.batches) == steps_taken
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_run_directory_gets_log_lines_snapshots_and_sample_grids(tmp_path):
    calls = []

    def sample_fn(model, step):
        calls.append((model, model.training, step))
        # 2D runs return None: no grid to save.
        return torch.rand(6, 3, 8, 8) * 2 - 1 if step == 3 else None

    config = _config(steps=6, log_every=2, checkpoint_every=3, sample_every=3, keep_checkpoints=True)
    trainer = Trainer(_model(), DenoisingLoss(), DATA, config, tmp_path, sample_fn, progress=False)
    trainer.fit()

    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [2, 4, 6]
    for record in records:
        assert record.keys() == {"step", "loss", "lr", "images_per_sec", "seconds"}
        assert math.isfinite(record["loss"]) and record["images_per_sec"] > 0
    assert records[0]["lr"] == pytest.approx(1e-2 * 2 / 4) and records[-1]["lr"] == 1e-2
    assert calls == [(trainer.ema.model, False, 3), (trainer.ema.model, False, 6)]
    assert sorted(path.name for path in (tmp_path / "samples").iterdir()) == ["step-0000003.png"]
    # Six 8x8 images tile three to a row with one pixel of padding.
    assert Image.open(tmp_path / "samples/step-0000003.png").size == (3 * 9 + 1, 2 * 9 + 1)
    assert load_checkpoint(tmp_path / "checkpoint-0000003.pt")["step"] == 3
    assert load_checkpoint(tmp_path / "checkpoint-0000006.pt")["step"] == 6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"grad_clip": -1.0}, "grad_clip must be None or > 0"),
        ({"betas": (0.9, 1.5)}, "betas must be two numbers"),
    ],
)
def test_invalid_settings_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_fp16_needs_cuda_and_bf16_autocast_runs_on_the_cpu(tmp_path):
    with pytest.raises(ValueError, match="'fp16' needs CUDA"):
        Trainer(_model(), DenoisingLoss(), DATA, _config(precision="fp16"), None)
    result = Trainer(_model(), DenoisingLoss(), DATA, _config(steps=3, precision="bf16"), None, progress=False).fit()
    assert len(result.losses) == 3 and all(math.isfinite(loss) for loss in result.losses)


def _run_ddp_worker(run_dir: Path, *arguments: str) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [ddp_worker.__file__, str(run_dir), *arguments]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]


needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


@needs_gloo
def test_two_processes_under_torchrun_train_like_one_with_the_same_global_batch(tmp_path):
    _run_ddp_worker(tmp_path / "ddp")
    ddp_worker.fit(tmp_path / "single")
    ddp, single = load_checkpoint(tmp_path / "ddp/checkpoint.pt"), load_checkpoint(tmp_path / "single/checkpoint.pt")
    assert len(ddp["rng"]) == 2 and ddp["data"] == single["data"]
    # All-reduce sums the two halves of the batch in another order than one process does.
    torch.testing.assert_close(ddp["model"], single["model"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddp["ema"], single["ema"], rtol=1e-5, atol=1e-6)


@needs_gloo
def test_a_two_player_run_on_two_processes_computes_the_structure_of_the_global_batch(tmp_path):
    _run_ddp_worker(tmp_path / "ddp", "two_player")
    ddp_worker.fit(tmp_path / "single", two_player=True)
    ddp, single = load_checkpoint(tmp_path / "ddp/checkpoint.pt"), load_checkpoint(tmp_path / "single/checkpoint.pt")
    # The structure loss of every logged interval, as the encoder saw it: the same global batches give the same.
    ddp_log, single_log = (
        [json.loads(line)["adversary_loss"] for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        for name in ("ddp", "single")
    )
    assert len(ddp_log) == 3 and all(loss < 0 for loss in ddp_log)
    torch.testing.assert_close(ddp_log, single_log, rtol=1e-5, atol=1e-6)
    # Both players' weights and optimizer moments end equal: the gathered gradients are the one-process ones.
    torch.testing.assert_close(ddp["model"], single["model"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddp["adversary"]["module"], single["adversary"]["module"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        ddp["adversary"]["optimizer"]["state"], single["adversary"]["optimizer"]["state"], rtol=1e-5, atol=1e-6
    )
