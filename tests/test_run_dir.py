"""A run folder through the command line: the checkpoint carries its config, and a resume is the run it claims."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from identical import assert_same_checkpoint

from diffbook.cli import main
from diffbook.config import read_config
from diffbook.experiments.run_dir import config_changes
from diffbook.train import load_checkpoint, save_checkpoint
from diffbook.train.ema import initial_weight_share, short_run_warning


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _train(capsys, run_dir, *overrides, config="toy/edm") -> tuple[int, str, str]:
    return _run(capsys, "train", "--config", config, "train.steps=4", *overrides, "--run-dir", run_dir)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }


def test_config_changes_name_what_a_resume_may_not_change():
    stored = read_config("toy/edm")
    new = read_config("toy/edm", ["train.steps=9", "train.log_every=1", "sample.steps=3", "train.lr=0.5"])
    assert config_changes(stored, new) == [f"train.lr: {stored['train']['lr']!r} -> 0.5"]
    assert config_changes(stored, read_config("toy/edm", ["network.overrides.dropout=0.1"])) == [
        "network.overrides.dropout: (unset) -> 0.1"
    ]
    assert config_changes(stored, stored) == []
    assert len(config_changes(stored, new, allowed=frozenset())) == 4


def test_the_checkpoint_alone_samples_its_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _train(capsys, run_dir, config="digits/edm")[0] == 0
    assert load_checkpoint(run_dir / "checkpoint.pt")["config"] == read_config(run_dir / "config.yaml")
    (run_dir / "config.yaml").unlink()
    status, out, err = _run(capsys, "sample", "--ckpt", run_dir / "checkpoint.pt", "--seeds", "0-1", "--out",
                            tmp_path / "samples", "sample.steps=2")  # fmt: skip
    assert status == 0, err
    assert sorted(path.name for path in (tmp_path / "samples").glob("*.png")) == ["000000.png", "000001.png"]


@pytest.mark.parametrize(
    ("config", "overrides", "named"),
    [
        ("digits/edm", [], "data.name: 'eight_gaussians' -> 'digits'"),
        ("toy/edm", ["train.lr=0.5"], "train.lr: 0.002 -> 0.5"),
        ("toy/edm", ["train.batch_size=7"], "train.batch_size: 256 -> 7"),
        ("toy/edm", ["data.name=two_moons"], "data.name: 'eight_gaussians' -> 'two_moons'"),
    ],
    ids=["other-config", "learning-rate", "batch-size", "dataset"],
)
def test_a_resume_that_changes_what_the_run_learns_is_refused_and_changes_nothing(
    tmp_path, capsys, config, overrides, named
):
    run_dir = tmp_path / "run"
    assert _train(capsys, run_dir)[0] == 0
    before = _snapshot(run_dir)
    status, _, err = _train(capsys, run_dir, "train.steps=6", *overrides, config=config)
    assert status == 2
    assert f"{run_dir} holds a run of another config" in err and named in err and "--accept-changes" in err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(run_dir) == before


def test_accept_changes_trains_the_run_on_with_the_new_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _train(capsys, run_dir)[0] == 0
    status, _, err = _train(capsys, run_dir, "train.steps=6", "train.lr=0.002", "--accept-changes")
    assert status == 0, err
    assert "resuming from step 4 of 6" in err
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == 6 and state["config"]["train"]["lr"] == 0.002
    assert read_config(run_dir / "config.yaml")["train"]["lr"] == 0.002


def test_more_steps_resume_and_as_many_or_fewer_change_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _train(capsys, run_dir)[0] == 0
    before = _snapshot(run_dir)
    for steps in (4, 2):
        status, out, _ = _train(capsys, run_dir, f"train.steps={steps}")
        assert status == 0 and f"{run_dir} is already at step 4 of {steps}: nothing to train" in out
        assert _snapshot(run_dir) == before
    status, _, err = _train(capsys, run_dir, "train.steps=6", "train.log_every=1")
    assert status == 0 and "resuming from step 4 of 6" in err
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 6


def _train_in_a_new_process(run_dir, *overrides) -> dict:
    """The checkpoint that ``python -m diffbook train`` writes, run as a user runs it: a fresh interpreter."""
    command = [sys.executable, "-m", "diffbook", "train", "--config", "toy/edm", "train.steps=20", *overrides]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    subprocess.run([*command, "--run-dir", str(run_dir)], check=True, env=env, capture_output=True)
    return load_checkpoint(run_dir / "checkpoint.pt")


def test_the_same_command_and_seed_give_the_same_checkpoint(tmp_path):
    first = _train_in_a_new_process(tmp_path / "a")
    assert_same_checkpoint(first, _train_in_a_new_process(tmp_path / "b"))
    other_seed = _train_in_a_new_process(tmp_path / "c", "train.seed=1")["model"]
    assert not all(torch.equal(first["model"][key], other_seed[key]) for key in other_seed)


def test_the_ema_warning_is_the_closed_form_share_of_the_initial_weights(tmp_path, capsys):
    # decay = 0.5 ** (batch / half-life); after n steps the initial weights weigh decay ** n = 0.5 ** (n b / h).
    assert initial_weight_share(1000, 100, 20) == pytest.approx(0.25)
    assert short_run_warning(1000, 100, 50) is None  # five half-lives: 3.1%, the threshold
    assert "still make up 25% of the EMA model" in short_run_warning(1000, 100, 20)
    assert short_run_warning(None, 100, 20) is None
    assert short_run_warning(1000, 100, 20, rampup_ratio=0.05) is None  # the ramp-up starts from the live weights
    status, _, err = _train(capsys, tmp_path / "run", "train.steps=50")
    assert status == 0 and "warning: the EMA half-life" in err and "set train.ema_halflife_images to at most" in err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["steps"] == 50


def test_a_run_fine_tuned_from_licensed_weights_says_so_and_records_the_licence(tmp_path, capsys):
    assert _train(capsys, tmp_path / "base")[0] == 0
    base = load_checkpoint(tmp_path / "base" / "checkpoint.pt")
    save_checkpoint(base | {"licence": "CC BY-NC 4.0 (facebookresearch/DiT)"}, tmp_path / "released.pt")
    status, _, err = _train(capsys, tmp_path / "tuned", f"network.init_from={tmp_path / 'released.pt'}")
    assert status == 0 and "is licensed CC BY-NC 4.0 (facebookresearch/DiT); this run's weights inherit it" in err
    assert load_checkpoint(tmp_path / "tuned" / "checkpoint.pt")["licence"] == "CC BY-NC 4.0 (facebookresearch/DiT)"
    assert load_checkpoint(tmp_path / "base" / "checkpoint.pt")["licence"] is None
