"""The comparison suite (chapter 8): objectives stacked on other objectives, network calls counted, and the
driver's dependencies, costs, resuming and summary."""

import json
import math

import pytest
import torch

from diffbook import comparison
from diffbook.comparison import Evaluation, Method, Suite, run_suite, summarize
from diffbook.config import build_model, build_objective, build_sampler, load_config
from diffbook.objectives import IsoLoss, SelfPerceptualLoss, isotropy_penalty
from diffbook.profiles import seed_everything

ISO_OVER_SP = "objective={kind: iso, weight: 0.5, base: {kind: self_perceptual}}"


def _sp_model():
    seed_everything(0)
    return build_model(load_config("toy/sp_pretrain"))


def test_iso_over_self_perceptual_adds_the_penalty_of_its_prediction():
    model = _sp_model()
    objective = build_objective(load_config("toy/self_perceptual", [ISO_OVER_SP]), model)
    assert isinstance(objective, IsoLoss) and isinstance(objective.base, SelfPerceptualLoss)
    x0 = torch.randn(16, 2)
    out = objective(model, x0, torch.Generator().manual_seed(3))
    base = objective.base(model, x0, torch.Generator().manual_seed(3))
    assert torch.equal(out["loss"], base["loss"] + 0.5 * isotropy_penalty(base["eps_pred"]))
    out["loss"].backward()
    assert all(p.grad is not None for p in model.net.parameters())


def test_self_perceptual_predictions_remake_the_noisy_input():
    model = _sp_model()
    objective = build_objective(load_config("toy/self_perceptual"), model)
    x0, eps = torch.randn(16, 2), torch.randn(16, 2)
    sigma = torch.cat([torch.logspace(-2, 2, 15), torch.tensor([math.inf])])  # the zero-SNR step included
    out = objective.loss_at(model, x0, eps, sigma, sigma.flip(0))
    alpha = torch.where(sigma.isinf(), 0.0, 1 / torch.sqrt(1 + sigma.square()))[:, None]
    s = torch.sqrt(1 - alpha.square())
    assert out["x0_pred"].requires_grad and out["eps_pred"].requires_grad
    torch.testing.assert_close(alpha * out["x0_pred"] + s * out["eps_pred"], alpha * x0 + s * eps)


def test_a_penalty_of_weight_zero_over_any_base_is_that_base_bit_for_bit():
    model = _sp_model()
    cfg = load_config("toy/self_perceptual", [ISO_OVER_SP.replace("0.5", "0")])
    objective = build_objective(cfg, model)
    x0 = torch.randn(8, 2)
    out = objective(model, x0, torch.Generator().manual_seed(1))
    assert torch.equal(out["loss"], objective.base(model, x0, torch.Generator().manual_seed(1))["loss"])


def test_sadm_takes_a_nested_base_and_refuses_to_be_one():
    cfg = load_config("toy/sadm", ["objective.base={kind: iso, weight: 0.1}", "network.init_from=null"])
    objective = build_objective(cfg, build_model(cfg))
    assert isinstance(objective.base, IsoLoss) and objective.base.weight == 0.1
    with pytest.raises(ValueError, match="outermost"):
        build_objective(load_config("toy/iso", ["objective.base={kind: sadm}"]))
    with pytest.raises(ValueError, match="inside it"):
        build_objective(load_config("toy/iso", ["objective.base={kind: denoising}", "objective.label_dropout=0.1"]))
    with pytest.raises(ValueError, match="objective.base.weight"):
        load_config("toy/sadm", ["objective.base={kind: iso, wieght: 0.1}"])
    with pytest.raises(ValueError, match="objective.base.kind"):
        load_config("toy/sadm", ["objective.base={kind: nope}"])


def test_a_base_without_the_prediction_a_penalty_needs_is_an_error():
    cfg = load_config("toy/bcm", ["objective={kind: iso, weight: 0.1, base: {kind: bcm}}"])
    model = build_model(cfg)
    with pytest.raises(ValueError, match="eps_pred"):
        build_objective(cfg, model)(model, torch.randn(8, 2))


@pytest.mark.parametrize(
    ("config", "overrides", "nfe"),
    [
        ("toy/edm", ["sample.steps=6"], 11),
        ("toy/edm", ["sample.sampler=euler", "sample.steps=3"], 3),
        ("toy/self_perceptual", ["sample.steps=7"], 7),
        ("toy/ddpm", ["sample.steps=5"], 5),
        ("toy/bcm", ["sample.steps=4"], 4),
    ],
)
def test_a_samplers_network_calls_are_counted_before_it_runs(config, overrides, nfe):
    cfg = load_config(config, [*overrides, "network.init_from=null"])
    sampler = build_sampler(cfg)
    calls = []
    model = build_model(cfg)
    model.net.register_forward_hook(lambda *_: calls.append(1))
    output = sampler(model, torch.randn(4, 2), None, torch.Generator().manual_seed(0))
    assert sampler.nfe == output.nfe == len(calls) == nfe


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
        cfg = load_config(run / "config.yaml")
        assert cfg["network"]["init_from"] == str(tmp_path / "eight_gaussians" / f"mse-seed{seed}" / "checkpoint.pt")
        parent = json.loads((tmp_path / "eight_gaussians" / f"mse-seed{seed}" / "train.json").read_text())
        cost = json.loads((run / "train.json").read_text())
        assert math.isclose(cost["total_seconds"], cost["seconds"] + parent["seconds"])
        samples = comparison.load_samples(tmp_path, "eight_gaussians", _tiny_suite().methods[1], Evaluation(), seed)
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
        comparison, "train_run", lambda cfg, run, *a, **k: trained.append(run.name) or real_train(cfg, run, *a, **k)
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
        comparison.suite("cifar")


@pytest.mark.parametrize("name", comparison.SUITES)
def test_the_shipped_suites_have_every_method_and_valid_configs(name):
    chosen = comparison.suite(name)
    labels = {method.label for method in chosen.methods}
    papers = {"MSE (EDM)", "Self-perceptual", "Iso-Diffusion", "SADM", "BCM"}
    assert papers <= labels and sum("+" in label for label in labels) >= 2
    assert ("DiffiT (TMSA)" in labels) == (name == "digits")
    rows = [method.row(evaluation) for method in chosen.methods for evaluation in method.evaluations]
    assert {"BCM, 1 NFE", "BCM, 2 NFE", "BCM, 4 NFE", "MSE (EDM), Heun, 35 NFE"} <= set(rows)
    for method in chosen.methods:
        task = comparison._Task(chosen, method, chosen.datasets[0], 0, comparison.Path("out"))
        for evaluation in method.evaluations:
            task.config(evaluation)  # every key valid


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

    rows = summarize([record("b", 0, 1.0), record("a", 0, 5.0), record("b", 1, 3.0)])
    assert [(row["row"], row["seeds"]) for row in rows] == [("b", 2), ("a", 1)]
    assert rows[0]["fid"] == (2.0, math.sqrt(2)) and rows[1]["fid"] == (5.0, 0.0)


def test_a_run_directory_of_another_config_is_refused(tmp_path):
    run_suite(_tiny_suite(seeds=1), tmp_path, progress=False)
    changed = _tiny_suite(seeds=1)
    changed = Suite(changed.name, changed.datasets, changed.methods, changed.metrics, 200, 1, (*TINY, "train.lr=1e-4"))
    with pytest.raises(ValueError, match="another config"):
        run_suite(changed, tmp_path, progress=False)
