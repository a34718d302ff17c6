"""Sweeps: the grid, the runs, resuming, the summary's statistics, and scoring against known answers."""

import json
import math

import pytest
import torch

from diffbook.cli import main
from diffbook.config import read_config
from diffbook.data import stack_dataset
from diffbook.data.images import load_image_dataset
from diffbook.data.pixels import to_uint8
from diffbook.experiments import Experiment
from diffbook.experiments.report import summarize
from diffbook.experiments.scoring import draw_samples, reference_set, score
from diffbook.experiments.sweep import SweepRun, grid_values, parse_grid, run_sweep, sweep_runs, sweep_table

TINY = ["train.steps=30", "train.log_every=10", "sample.steps=10", "train.batch_size=32"]


def test_grid_is_the_cartesian_product_of_its_axes():
    grid = parse_grid(["objective.weight=0,0.1", "objective.form=batch,sample"])
    assert grid == [
        ("objective.weight=0", "objective.form=batch"),
        ("objective.weight=0", "objective.form=sample"),
        ("objective.weight=0.1", "objective.form=batch"),
        ("objective.weight=0.1", "objective.form=sample"),
    ]
    assert parse_grid([]) == [()]
    with pytest.raises(ValueError, match="key=v1,v2"):
        parse_grid(["objective.weight"])


def test_runs_are_seed_major_and_named_for_paths():
    runs = sweep_runs(parse_grid(["objective.weight=0,0.1"]), [0, 1])
    assert [(r.overrides[0], r.seed) for r in runs] == [
        ("objective.weight=0", 0),
        ("objective.weight=0.1", 0),
        ("objective.weight=0", 1),
        ("objective.weight=0.1", 1),
    ]
    assert SweepRun(("data.name=a b/c",), 2).name == "data.name=a_b_c-seed2"


def _record(weight: str, seed: int, precision: float) -> dict:
    return {
        "overrides": [f"objective.weight={weight}"],
        "seed": seed,
        "metrics": {"precision": precision},
        "train_seconds": 1.0,
    }


def test_summary_is_mean_and_sample_std_per_grid_point():
    records = [_record("0", 0, 0.5), _record("0.3", 0, 0.9), _record("0", 1, 0.7), _record("0.3", 1, 0.9)]
    rows = summarize(records, group=("overrides",))
    assert [row["overrides"] for row in rows] == [["objective.weight=0"], ["objective.weight=0.3"]]
    assert rows[0]["precision"] == pytest.approx((0.6, math.sqrt(0.02)))
    assert rows[1]["precision"] == (pytest.approx(0.9), 0.0) and rows[1]["seeds"] == 2
    assert grid_values(rows, "objective.weight") == [0, 0.3]
    table = sweep_table(rows).splitlines()
    assert table[0] == "| objective.weight | seeds | precision | train_seconds |"
    assert table[2] == "| 0 | 2 | 0.600 ± 0.141 | 1.000 ± 0.000 |"


def test_sweep_writes_every_run_and_resumes_without_retraining(tmp_path):
    grid = parse_grid(["objective.weight=0,0.3"])
    records = run_sweep("toy/iso", grid, [0], tmp_path, TINY, num_samples=200, progress=False)
    assert [r["run"] for r in records] == ["objective.weight=0-seed0", "objective.weight=0.3-seed0"]
    for record in records:
        run_dir = tmp_path / record["run"]
        assert {"checkpoint.pt", "config.yaml", "metrics.json", "samples.pt"} <= {p.name for p in run_dir.iterdir()}
        assert torch.load(run_dir / "samples.pt").shape == (200, 2)
        scores = {"precision", "recall", "density", "coverage", "sliced_wasserstein", "pairwise_w1"}
        assert set(record["metrics"]) == scores
    assert read_config(tmp_path / records[1]["run"] / "config.yaml")["objective"]["weight"] == 0.3
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/checkpoint.pt")}
    again = run_sweep("toy/iso", grid, [0], tmp_path, TINY, num_samples=200, progress=False)
    assert again == records and stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/checkpoint.pt")}
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert [row["overrides"] for row in summary] == [list(point) for point in grid]
    assert (tmp_path / "table.md").read_text().count("\n") == 4


def test_parallel_jobs_give_the_records_of_serial_runs(tmp_path):
    grid = parse_grid(["objective.weight=0,0.3"])
    serial = run_sweep("toy/iso", grid, [0], tmp_path / "serial", TINY, num_samples=200, progress=False)
    parallel = run_sweep("toy/iso", grid, [0], tmp_path / "parallel", TINY, num_samples=200, jobs=2, progress=False)
    for a, b in zip(serial, parallel, strict=True):
        assert a["run"] == b["run"]
        for name, value in a["metrics"].items():
            assert b["metrics"][name] == pytest.approx(value, rel=1e-3, abs=1e-3)


def test_a_bad_key_fails_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="objective.weight"):
        run_sweep("toy/iso", parse_grid(["objective.wieght=0,1"]), [0], tmp_path, TINY, progress=False)
    assert not any(tmp_path.iterdir())


def test_toy_reference_is_a_fresh_draw_and_scores_itself_perfectly():
    cfg = Experiment.load("toy/iso")
    reference = reference_set(cfg, seed=0, count=500)
    assert reference.shape == (500, 2) and not torch.equal(reference, reference_set(cfg, seed=1, count=500))
    results = score(cfg, reference.clone(), reference)
    assert (results["precision"], results["recall"], results["coverage"]) == (1, 1, 1)
    assert results["sliced_wasserstein"] == pytest.approx(0, abs=1e-12)


def test_digits_real_images_score_as_perfect_samples():
    cfg = Experiment.load("digits/iso")
    reference = reference_set(cfg, seed=0)
    images, _ = stack_dataset(load_image_dataset("digits", resolution=16))
    assert torch.equal(reference, torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2))
    results = score(cfg, images, reference)
    assert results["fid"] == pytest.approx(0, abs=1e-3)
    assert results["precision"] == results["recall"] == results["coverage"] == 1


def test_cli_sweep_prints_the_table(tmp_path, capsys):
    args = ["sweep", "--config", "toy/iso", "--grid", "objective.form=batch,sample", "--seeds", "0"]
    assert main([*args, "--out", str(tmp_path), "--samples", "100", *TINY]) == 0
    out = capsys.readouterr().out
    assert "| objective.form | seeds | precision |" in out and "| sample | 1 |" in out
    assert main([*args, "--out", str(tmp_path), "objective.wieght=1"]) == 2


def test_a_class_conditional_model_samples_every_class_in_turn():
    cfg = Experiment.load("toy/iso", ["network.overrides.num_classes=3", "sample.steps=2"])
    model = cfg.build_model()
    seen: list[torch.Tensor] = []
    model.net.register_forward_pre_hook(lambda net, args: seen.append(args[2].clone()))
    samples = draw_samples(model, cfg, count=10, seed=0, batch_size=4)
    assert samples.shape == (10, 2)
    chunks = [torch.tensor(labels) for labels in ([0, 1, 2, 0], [1, 2, 0, 1], [2, 0])]
    assert all(any(torch.equal(labels, chunk) for chunk in chunks) for labels in seen)
    assert {tuple(labels.tolist()) for labels in seen} == {tuple(chunk.tolist()) for chunk in chunks}
    unconditional = Experiment.load("toy/iso", ["sample.steps=2"]).build_model()
    calls: list[tuple] = []
    unconditional.net.register_forward_pre_hook(lambda net, args: calls.append(args))
    draw_samples(unconditional, Experiment.load("toy/iso", ["sample.steps=2"]), count=4, seed=0)
    assert calls and all(len(args) < 3 or args[2] is None for args in calls)
