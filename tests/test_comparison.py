"""The comparison suite (chapter 8): the driver's dependencies, costs, resuming and summary."""

import json
import math

import pytest

from diffbook.config import read_config
from diffbook.experiments import comparison, suites
from diffbook.experiments.comparison import run_suite, summarize_suite
from diffbook.experiments.suites import Evaluation, Method, Suite

TINY = ("train.log_every=5", "train.checkpoint_every=5", "train.batch_size=32", "data.n=500")


def _tiny_suite(seeds: int = 2) -> Suite:
    return Suite(
        "tiny",
        ("eight_gaussians",),
        (
            Method(
                "MSE",
                "toy/edm",
                ("train.steps=10",),
                evaluations=(Evaluation("Heun", ("sample.steps=3",)), Evaluation("Euler", ("sample.sampler=euler",))),
            ),
            Method("MSE, more", "toy/edm", ("train.steps=5", "sample.steps=3"), finetunes="MSE"),
        ),
        ("precision", "sliced_wasserstein"),
        num_samples=200,
        seeds=seeds,
        overrides=TINY,
    )


def test_a_suite_trains_fine_tunings_from_their_parents_and_counts_their_cost(tmp_path):
    results = run_suite(_tiny_suite(), tmp_path, progress=False)
    rows = {(row["row"], row["seeds"]): row for row in results["summary"]}
    assert list(rows) == [("MSE, Heun", 2), ("MSE, Euler", 2), ("MSE, more", 2)]
    assert [rows[key]["nfe"] for key in rows] == [5, 18, 5]
    assert rows[("MSE, more", 2)]["train_steps"] == 15
    for seed in (0, 1):
        run = tmp_path / "eight_gaussians" / f"mse_more-seed{seed}"
        cfg = read_config(run / "config.yaml")
        assert cfg["network"]["init_from"] == str(tmp_path / "eight_gaussians" / f"mse-seed{seed}" / "checkpoint.pt")
        parent = json.loads((tmp_path / "eight_gaussians" / f"mse-seed{seed}" / "train.json").read_text())
        cost = json.loads((run / "train.json").read_text())
        assert math.isclose(cost["total_seconds"], cost["seconds"] + parent["seconds"])
        samples = comparison.load_suite_samples(
            tmp_path, "eight_gaussians", _tiny_suite().methods[1], Evaluation(), seed
        )
        assert samples.shape == (200, 2)
    values = [r["metrics"]["precision"] for r in results["runs"] if r["row"] == "MSE, Euler"]
    mean, std = rows[("MSE, Euler", 2)]["precision"]
    assert math.isclose(mean, sum(values) / 2) and math.isclose(std, abs(values[0] - values[1]) / math.sqrt(2))
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n") == 5 and "sliced W" in table and (tmp_path / "comparison.png").stat().st_size > 0


def test_a_finished_suite_is_not_redone_and_more_seeds_only_add_runs(tmp_path, monkeypatch):
    run_suite(_tiny_suite(seeds=1), tmp_path, progress=False)
    trained = []
    real_train = comparison.train_run
    monkeypatch.setattr(
        comparison, "train_run", lambda exp, run, *a, **k: trained.append(run.name) or real_train(exp, run, *a, **k)
    )
    first = run_suite(_tiny_suite(seeds=1), tmp_path, progress=False)
    assert trained == []
    second = run_suite(_tiny_suite(seeds=2), tmp_path, progress=False)
    assert sorted(trained) == ["mse-seed1", "mse_more-seed1"]
    assert second["runs"][:3] == first["runs"]


def test_parallel_runs_wait_for_the_model_they_fine_tune(tmp_path):
    serial = run_suite(_tiny_suite(seeds=1), tmp_path / "serial", progress=False)
    parallel = run_suite(_tiny_suite(seeds=1), tmp_path / "parallel", jobs=2, progress=False)
    assert [r["row"] for r in parallel["runs"]] == [r["row"] for r in serial["runs"]]
    for one, other in zip(serial["runs"], parallel["runs"], strict=True):
        assert one["metrics"] == pytest.approx(other["metrics"], rel=1e-4)


def test_a_suite_refuses_what_it_cannot_run():
    mse = Method("MSE", "toy/edm")
    with pytest.raises(ValueError, match="unique"):
        Suite("s", ("gaussian",), (mse, mse), ("precision",), 10)
    with pytest.raises(ValueError, match="before it"):
        Suite("s", ("gaussian",), (Method("B", "toy/edm", finetunes="MSE"), mse), ("precision",), 10)
    with pytest.raises(ValueError, match="unknown suite"):
        suites.suite("cifar")


@pytest.mark.parametrize("name", suites.SUITES)
def test_the_shipped_suites_have_every_method_and_valid_configs(name):
    chosen = suites.suite(name)
    labels = {method.label for method in chosen.methods}
    papers = {"MSE (EDM)", "Self-perceptual", "Iso-Diffusion", "SADM", "BCM"}
    assert papers <= labels and sum("+" in label for label in labels) >= 2
    assert ("DiffiT (TMSA)" in labels) == (name == "digits")
    rows = [method.row(evaluation) for method in chosen.methods for evaluation in method.evaluations]
    assert {"BCM, 1 NFE", "BCM, 2 NFE", "BCM, 4 NFE", "MSE (EDM), Heun, 35 NFE"} <= set(rows)
    for method in chosen.methods:
        task = comparison.SuiteTask(chosen, method, chosen.datasets[0], 0, comparison.Path("out"))
        for evaluation in method.evaluations:
            task.experiment(evaluation)  # every key valid


def test_summarize_keeps_the_order_rows_first_appear_in():
    def record(row, seed, value):
        metrics = {"fid": value}
        return {
            "dataset": "d",
            "row": row,
            "method": row,
            "seed": seed,
            "nfe": 1,
            "train_steps": 3,
            "metrics": metrics,
            "train_seconds": 2.0,
            "sample_seconds": 1.0,
        }

    rows = summarize_suite([record("b", 0, 1.0), record("a", 0, 5.0), record("b", 1, 3.0)])
    assert [(row["row"], row["seeds"]) for row in rows] == [("b", 2), ("a", 1)]
    assert rows[0]["fid"] == (2.0, math.sqrt(2)) and rows[1]["fid"] == (5.0, 0.0)


def test_a_run_directory_of_another_config_is_refused(tmp_path):
    run_suite(_tiny_suite(seeds=1), tmp_path, progress=False)
    changed = _tiny_suite(seeds=1)
    changed = Suite(changed.name, changed.datasets, changed.methods, changed.metrics, 200, 1, (*TINY, "train.lr=1e-4"))
    with pytest.raises(ValueError, match="another config"):
        run_suite(changed, tmp_path, progress=False)
