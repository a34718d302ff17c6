"""The command line: train, sample, evaluate and the digits feature network, through ``diffbook.cli.main``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffbook.cli import main
from diffbook.config import read_config
from diffbook.data.pixels import to_uint8, write_pngs
from diffbook.experiments import Experiment
from diffbook.experiments.sampling import labels_by_seed, parse_int_ranges
from diffbook.metrics.features import (
    DIGITS_WEIGHTS,
    InceptionFeatures,
    InceptionWeightsMissingError,
    held_out_accuracy,
    load_digits_feature_net,
)


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_dry_run_prints_the_resolved_config(capsys):
    status, out, _ = _run(capsys, "train", "--config", "digits/edm", "train.steps=3", "train.lr=1e-3", "--dry-run")
    assert status == 0
    assert yaml.safe_load(out) == read_config("digits/edm", ["train.steps=3", "train.lr=1e-3"])


def test_an_unknown_key_exits_with_the_closest_keys(capsys):
    status, _, err = _run(capsys, "train", "--config", "digits/edm", "train.stpes=3", "--dry-run")
    assert status == 2 and "unknown config key 'train.stpes'; closest valid keys: train.steps" in err


@pytest.mark.parametrize(("text", "seeds"), [("0-3", [0, 1, 2, 3]), ("0,5,7", [0, 5, 7]), ("2-3, 9", [2, 3, 9])])
def test_seed_ranges_parse(text, seeds):
    assert parse_int_ranges(text) == seeds


@pytest.mark.parametrize(("text", "reason"), [("3-1", "runs backwards"), ("0-x", "expected"), ("1,1", "twice")])
def test_bad_seed_ranges_are_clear_errors(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_int_ranges(text)


def test_the_committed_feature_net_is_small_and_classifies_held_out_digits():
    from importlib import resources

    assert (resources.files("diffbook") / DIGITS_WEIGHTS).stat().st_size < 1_000_000
    assert held_out_accuracy(load_digits_feature_net()) > 0.95


def _tiny_run(tmp_path, name: str) -> str:
    """A run directory holding a random-init model in the Trainer's checkpoint format; returns the checkpoint."""
    # init_zero=false: a zero-initialised network's output does not depend on its input, a weak test of batching.
    experiment = Experiment.load(name, ["sample.steps=3", "network.overrides.init_zero=false"])
    torch.manual_seed(0)
    run_dir = tmp_path / name.replace("/", "-")
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(experiment.to_yaml())
    torch.save({"model": experiment.build_model().state_dict(), "ema": None, "step": 0}, run_dir / "checkpoint.pt")
    return str(run_dir / "checkpoint.pt")


def _pixels(directory, seed) -> np.ndarray:
    return np.asarray(Image.open(directory / f"{seed:06d}.png"))


@pytest.mark.parametrize("name", ["digits/edm", "digits/ddpm"], ids=["heun", "ddpm-stochastic"])
def test_image_k_is_the_same_whatever_the_batch_size(tmp_path, capsys, name):
    ckpt = _tiny_run(tmp_path, name)
    for batch in (1, 3):
        status, _, err = _run(
            capsys, "sample", "--ckpt", ckpt, "--seeds", "0-4", "--batch", batch, "--out", tmp_path / f"b{batch}"
        )
        assert status == 0, err
    # The same noise and steps; only the kernels' summation order may change with the batch size (~1e-6), which
    # can move a pixel that lies at a rounding boundary by one level, and no more.
    b1, b3 = (np.stack([_pixels(tmp_path / f"b{batch}", seed) for seed in range(5)]).astype(int) for batch in (1, 3))
    assert np.abs(b1 - b3).max() <= 1 and (b1 != b3).mean() < 0.01
    assert not np.array_equal(_pixels(tmp_path / "b1", 0), _pixels(tmp_path / "b1", 1))
    arrays = np.load(tmp_path / "b3" / "samples.npz")  # ADM's layout: arr_0 the images; no labels, unconditional
    assert arrays["arr_0"].shape == (5, 16, 16, 1) and arrays["arr_0"].dtype == np.uint8
    assert np.array_equal(arrays["arr_0"][2, ..., 0], _pixels(tmp_path / "b3", 2))
    assert arrays["seeds"].tolist() == [0, 1, 2, 3, 4] and "arr_1" not in arrays


def test_class_labels_cycle_by_seed_or_are_drawn_from_it_and_go_into_the_npz(tmp_path, capsys):
    ckpt = _tiny_run(tmp_path, "digits/sp_pretrain_cond")
    for labels, batch in (("0-9", 4), ("random", 4), ("random", 1)):
        out = tmp_path / f"{labels}-{batch}"
        args = ("--seeds", "5-16", "--batch", batch, "--class-labels", labels, "--out", out)
        assert _run(capsys, "sample", "--ckpt", ckpt, *args)[0] == 0
    cycled, random_4, random_1 = (
        np.load(tmp_path / name / "samples.npz")["arr_1"].tolist() for name in ("0-9-4", "random-4", "random-1")
    )
    assert cycled == [seed % 10 for seed in range(5, 17)]
    assert random_4 == random_1 == labels_by_seed(range(5, 17), 10)[5:] != cycled
    # Uniform over the classes: 20,000 draws put 2,000 +- 4 sigma (about 170) in each.
    counts = np.bincount(labels_by_seed(range(20_000), 10), minlength=10)
    assert np.abs(counts - 2_000).max() < 170


def test_evaluate_reads_the_npz_as_it_reads_the_pngs(tmp_path, capsys):
    ckpt = _tiny_run(tmp_path, "digits/edm")
    assert _run(capsys, "sample", "--ckpt", ckpt, "--seeds", "0-9", "--out", tmp_path / "s")[0] == 0
    evaluate = ("evaluate", "--samples", tmp_path / "s", "--ref", "digits", "--metrics", "fid,is")
    assert _run(capsys, *evaluate, "--out", tmp_path / "png.json")[0] == 0
    for png in (tmp_path / "s").glob("*.png"):
        png.unlink()
    assert _run(capsys, *evaluate, "--out", tmp_path / "npz.json")[0] == 0
    read = [json.loads((tmp_path / name).read_text())["metrics"] for name in ("png.json", "npz.json")]
    assert read[0] == read[1]


def test_a_stopped_sample_run_resumes_where_it_stopped(tmp_path, capsys):
    ckpt, full, stopped = _tiny_run(tmp_path, "digits/edm"), tmp_path / "full", tmp_path / "stopped"
    assert _run(capsys, "sample", "--ckpt", ckpt, "--seeds", "0-5", "--batch", "4", "--out", full)[0] == 0
    # A run stopped after seeds 0-2, mid-way through writing seed 3: its PNG exists only as the partial file.
    stopped.mkdir()
    for seed in (1, 2):
        (stopped / f"{seed:06d}.png").write_bytes((full / f"{seed:06d}.png").read_bytes())
    write_pngs(stopped, [0], np.zeros((1, *_pixels(full, 0).shape, 1), dtype=np.uint8))  # digits: one channel
    (stopped / "000003.png.partial").write_bytes(b"\x89PNG")
    status, _, err = _run(capsys, "sample", "--ckpt", ckpt, "--seeds", "0-5", "--batch", "4", "--out", stopped)
    assert status == 0 and "resuming: 3 of this process's 6 images are already in" in err
    resumed, reference = np.load(stopped / "samples.npz"), np.load(full / "samples.npz")
    assert not resumed["arr_0"][0].any()  # seed 0's image was read back, not sampled again
    np.testing.assert_array_equal(resumed["arr_0"][1:], reference["arr_0"][1:])
    np.testing.assert_array_equal(resumed["seeds"], np.arange(6))
    # Resuming with another sampler setting would mix two kinds of image in one folder.
    status, _, err = _run(capsys, "sample", "--ckpt", ckpt, "--seeds", "0-5", "--out", stopped, "sample.steps=2")
    assert status == 2 and "holds samples made with other settings" in err


def test_two_processes_under_torchrun_sample_the_images_and_the_npz_of_one(tmp_path, capsys):
    import os
    import subprocess
    import sys

    ckpt = _tiny_run(tmp_path, "digits/sp_pretrain_cond")  # class-conditional
    # Batch 1 in both, so that the two runs do the same arithmetic image by image and must agree exactly; that
    # the batch does not change image k is tested with the samplers.
    sample = ["sample", "--ckpt", ckpt, "--seeds", "0-4", "--batch", "1", "--class-labels", "3,7"]
    assert _run(capsys, *sample, "--out", tmp_path / "one")[0] == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    finished = subprocess.run(
        [*command, "diffbook", *sample, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert sorted(path.name for path in (tmp_path / "two").glob("*.npz")) == ["samples.npz"]
    one, two = np.load(tmp_path / "one/samples.npz"), np.load(tmp_path / "two/samples.npz")
    assert sorted(one) == sorted(two) == ["arr_0", "arr_1", "seeds"]
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])
    np.testing.assert_array_equal(two["arr_1"], [3, 7, 3, 7, 3])
    for seed in range(5):
        np.testing.assert_array_equal(_pixels(tmp_path / "one", seed), _pixels(tmp_path / "two", seed))


def test_sample_takes_overrides_of_the_runs_config(tmp_path, capsys):
    ckpt = _tiny_run(tmp_path, "digits/edm")
    status, out, err = _run(capsys, "sample", "--ckpt", ckpt, "--seeds", "0", "--out", tmp_path, "sample.steps=5",
                            "sample.sampler=euler", "--dry-run")  # fmt: skip
    assert status == 0, err
    assert yaml.safe_load(out)["sample"] == {"sampler": "euler", "steps": 5, "rho": 7.0, "S_churn": 0.0}
    for steps in (1, 3):
        args = ("sample", "--ckpt", ckpt, "--seeds", "0", "--out", tmp_path / f"steps{steps}", f"sample.steps={steps}")
        assert _run(capsys, *args)[0] == 0
    assert not np.array_equal(_pixels(tmp_path / "steps1", 0), _pixels(tmp_path / "steps3", 0))
    status, _, err = _run(capsys, "sample", "--ckpt", ckpt, "--seeds", "0", "--out", tmp_path, "sample.stpes=5")
    assert status == 2 and "unknown config key 'sample.stpes'" in err


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    status, _, err = _run(capsys, "sample", "--ckpt", tmp_path / "none.pt", "--seeds", "0-3", "--out", tmp_path)
    assert status == 2 and "checkpoint" in err and "not found" in err


def _digit_folder(directory, split="val") -> None:
    from diffbook.data import load_image_dataset, stack_dataset

    images, _ = stack_dataset(load_image_dataset("digits", split=split, resolution=16))
    directory.mkdir()
    write_pngs(directory, range(len(images)), to_uint8(images))


def test_evaluate_gives_zero_for_a_set_and_itself_and_more_against_noise(tmp_path, capsys):
    digits, noise = tmp_path / "digits", tmp_path / "noise"
    _digit_folder(digits)
    noise.mkdir()
    write_pngs(
        noise, range(300), to_uint8(torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    )

    report = tmp_path / "same.json"
    status, _, err = _run(capsys, "evaluate", "--samples", digits, "--ref", digits, "--out", report)
    assert status == 0, err
    same = json.loads(report.read_text())["metrics"]
    status, _, err = _run(capsys, "evaluate", "--samples", noise, "--ref", digits, "--metrics", "fid,kid")
    assert status == 0, err
    against_noise = json.loads((noise / "metrics-digits.json").read_text())["metrics"]

    assert abs(same["fid"]) < 1e-6 and against_noise["fid"] > 10
    # KID is unbiased for independent sets; a set against itself is slightly negative, but tiny next to noise.
    assert abs(same["kid"]) < 0.01 * against_noise["kid"]
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["is"] > 5  # confident predictions, spread evenly over the ten digits


def test_evaluate_against_the_registry_dataset(tmp_path, capsys):
    # Samples identical to the training digits, quantised as samples are, against --ref digits: FID ~ 0.
    _digit_folder(tmp_path / "all", split="train")
    status, out, err = _run(capsys, "evaluate", "--samples", tmp_path / "all", "--ref", "digits", "--metrics", "fid")
    assert status == 0, err
    assert abs(json.loads((tmp_path / "all" / "metrics-digits.json").read_text())["metrics"]["fid"]) < 1e-6


def test_inception_without_weights_names_the_file_and_the_url(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFBOOK_CACHE", str(tmp_path))
    with pytest.raises(InceptionWeightsMissingError, match=r"inception-2015-12-05\.pt.*https://nvlabs-fi-cdn"):
        InceptionFeatures()
    _digit_folder(tmp_path / "digits")
    status, _, err = _run(
        capsys, "evaluate", "--samples", tmp_path / "digits", "--ref", "digits", "--features", "inception"
    )
    assert status == 2 and str(tmp_path / "inception-2015-12-05.pt") in err


def test_train_sample_evaluate_end_to_end(tmp_path, capsys):
    run_dir, samples = tmp_path / "run", tmp_path / "samples"
    overrides = ["train.steps=3", "train.batch_size=8", "train.checkpoint_every=3", "sample.steps=2"]
    status, _, err = _run(capsys, "train", "--config", "digits/edm", *overrides, "--run-dir", run_dir)
    assert status == 0, err
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 3
    status, _, err = _run(capsys, "sample", "--ckpt", run_dir / "checkpoint.pt", "--seeds", "0-3", "--out", samples)
    assert status == 0, err
    status, _, err = _run(capsys, "evaluate", "--samples", samples, "--ref", "digits", "--metrics", "fid,kid,is")
    assert status == 0, err
    metrics = json.loads((samples / "metrics-digits.json").read_text())["metrics"]
    assert set(metrics) == {"fid", "kid", "kid_std", "is", "is_std"} and all(np.isfinite(list(metrics.values())))


def test_a_resumed_run_says_where_it_resumes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _run(capsys, "train", "--config", "toy/edm", "train.steps=4", "--run-dir", run_dir)[0] == 0
    status, _, err = _run(capsys, "train", "--config", "toy/edm", "train.steps=6", "--run-dir", run_dir)
    assert status == 0
    assert "resuming from step 4 of 6" in err


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "corrupt",
    [_truncated, lambda data: b"", lambda data: np.random.default_rng(0).bytes(4096)],
    ids=["truncated", "empty", "random-bytes"],
)
@pytest.mark.parametrize("command", ["sample", "resume"])
def test_a_corrupt_checkpoint_is_one_line_that_never_advises_unsafe_loading(tmp_path, capsys, corrupt, command):
    ckpt = Path(_tiny_run(tmp_path, "digits/edm"))
    ckpt.write_bytes(corrupt(ckpt.read_bytes()))
    if command == "sample":
        argv = ["sample", "--ckpt", ckpt, "--seeds", "0-3", "--out", tmp_path / "out"]
    else:
        argv = ["train", "--config", "digits/edm", "train.steps=2", "--run-dir", ckpt.parent]
    status, _, err = _run(capsys, *argv)
    assert status == 2
    assert "corrupt or not a diffbook checkpoint" in err and str(ckpt) in err
    assert "weights_only" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_sample_and_evaluate_show_progress_unless_tqdm_disable_is_set(tmp_path, capsys, monkeypatch):
    ckpt, out = _tiny_run(tmp_path, "digits/edm"), tmp_path / "samples"
    sample = ("sample", "--ckpt", ckpt, "--seeds", "0-3", "--batch", "2", "--out", out)
    evaluate = ("evaluate", "--samples", out, "--ref", "digits", "--metrics", "is")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    status, _, err = _run(capsys, *sample)
    assert status == 0 and "sample: 100%" in err and "4/4" in err
    status, _, err = _run(capsys, *evaluate)
    assert status == 0 and "features of the samples: 100%" in err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert all("100%" not in _run(capsys, *command)[2] for command in (sample, evaluate))
