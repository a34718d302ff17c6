"""The GPU check in its CPU smoke mode: the section it writes into RESULTS.md, its budget and its failures; and the
guided-sampling benchmark's claim that batch 64 and batch 1 sample the same images."""

import datetime
import math
from importlib.metadata import version

import pytest
import torch

from benchmarks.gpu_check import (
    SAMPLING_CONFIGS,
    SMOKE_CONFIGS,
    SMOKE_SAMPLE_STEPS,
    SampleResult,
    estimate_at_config_steps,
    main,
    one_line,
    per_gpu_batch,
    run_peers,
)
from benchmarks.guided_sampling import randomize_zero_init, sample, small_dit
from benchmarks.perf import describe_device
from diffbook.experiments import Experiment

OTHER_SECTIONS = (
    "# Benchmark results\n\nHand-written notes.\n\n<!-- peers.py cpu -->\nold table\n<!-- end peers.py cpu -->\n"
)


def _table(text: str, heading: str) -> list[list[str]]:
    """The cells of the rows of the first table after ``heading``."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _check(tmp_path, *options: str) -> str:
    results = tmp_path / "RESULTS.md"
    results.write_text(OTHER_SECTIONS)
    main(["--device", "cpu", "--smoke", "--results", str(results), *options])
    return results.read_text()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> str:
    return _check(tmp_path_factory.mktemp("gpu-check"), "--parts", "steps", "sampling")


def test_every_smoke_config_passes_one_step_with_finite_positive_numbers(smoke):
    rows = _table(smoke, "### One training step")
    assert [row[0] for row in rows] == list(SMOKE_CONFIGS)
    for config, batch, precision, _, _, seconds, images_per_s, peak, result in rows:
        assert result == "pass"
        assert precision == Experiment.load(config).train.precision  # the config's own: fp32, and sd21's bf16
        values = [float(seconds), float(images_per_s), float(peak)]
        assert all(math.isfinite(v) and v > 0 for v in values), values
        assert float(images_per_s) == pytest.approx(int(batch) / float(seconds), rel=0.01)
    assert rows[0][4] == "random, in place of init_from" and rows[1][4] == "random, tiny SD layout"


def test_sampling_rows_are_measured_at_each_step_count(smoke):
    rows = _table(smoke, "### Sampling")
    measured = [row for row in rows if row[-1] == "pass"]
    assert [(row[0], int(row[3])) for row in measured] == [(m, s) for m in SAMPLING_CONFIGS for s in SMOKE_SAMPLE_STEPS]
    for row in measured:
        seconds, images_per_s = float(row[5]), float(row[6])
        assert math.isfinite(seconds) and seconds > 0 and images_per_s == pytest.approx(int(row[4]) / seconds, rel=0.01)
    estimated = [row for row in rows if row[-1].startswith("estimated")]
    assert all(int(row[3]) == 250 for row in estimated)  # the configs' own 250 DDPM steps


def test_the_section_is_dated_and_leaves_the_other_sections_alone(smoke):
    assert smoke.startswith(OTHER_SECTIONS.rstrip())
    title = f"{describe_device(torch.device('cpu')).split(',')[0]}, {datetime.date.today().isoformat()} (smoke run)"
    assert f"<!-- gpu_check.py {title} -->\n## `gpu_check.py`: {title}" in smoke
    assert smoke.rstrip().endswith(f"<!-- end gpu_check.py {title} -->")
    assert f"torch {version('torch')}" in smoke


def test_the_estimate_at_the_configs_steps_is_the_line_through_the_two_runs():
    def row(steps: int, seconds: float, status: str = "pass") -> SampleResult:
        return SampleResult("m", 1, "ddpm", steps, 64, status, seconds=seconds)

    (estimate,) = estimate_at_config_steps([row(10, 2.0), row(30, 4.0)], 250)  # t = 1 + 0.1 steps
    assert estimate.estimated and estimate.steps == 250 and estimate.seconds == pytest.approx(26.0)
    assert estimate_at_config_steps([row(10, 4.0), row(30, 2.0)], 250) == []  # noise, not a cost per step
    assert estimate_at_config_steps([row(10, 2.0), row(30, 4.0, "fail")], 250) == []


def test_with_no_budget_everything_is_skipped_and_nothing_passes(tmp_path):
    text = _check(tmp_path, "--budget-seconds", "0")
    steps, samples = _table(text, "### One training step"), _table(text, "### Sampling")
    assert len(steps) == len(SMOKE_CONFIGS) and len(samples) == len(SAMPLING_CONFIGS) * len(SMOKE_SAMPLE_STEPS)
    assert all(row[-1].startswith("skipped: ") and row[5] == "" for row in steps + samples)
    assert "skipped, the budget was spent" in text


def test_a_config_that_cannot_run_is_a_failure_with_its_error_on_one_line(tmp_path):
    (row,) = _table(_check(tmp_path, "--configs", "imagenet64/bcm", "--parts", "steps"), "### One training step")
    assert row[2] == "fp16" and row[5:8] == ["", "", ""]
    assert row[-1] == "**fail**: ValueError: precision 'fp16' needs CUDA (the model is on cpu); use 'bf16' or 'fp32'"
    assert (
        one_line(RuntimeError("CUDA out of memory | 2 GiB\ntraceback ..."))
        == "RuntimeError: CUDA out of memory / 2 GiB"
    )


def test_peers_stopped_by_the_budget_says_so():
    assert "stopped at the budget after 1 s" in run_peers(torch.device("cpu"), smoke=True, seconds=1.0)


def test_the_per_gpu_batch_is_the_global_batch_over_a_node_of_eight():
    batches = {name: per_gpu_batch(Experiment.load(name)) for name in ("cifar10/ddpm", "imagenet64/bcm", "sd21/mse")}
    assert batches == {"cifar10/ddpm": 16, "imagenet64/bcm": 512, "sd21/mse": 112}


def test_guided_sampling_at_batch_four_gives_batch_ones_latents():
    experiment = small_dit(steps=3)
    torch.manual_seed(0)
    model = experiment.build_model().eval()
    randomize_zero_init(model)
    assert all(p.any() for p in model.parameters())
    with torch.no_grad():
        one, four = (sample(model, experiment, [0, 1, 2, 3], batch) for batch in (1, 4))
        torch.testing.assert_close(four, one, rtol=1e-5, atol=1e-5 * one.abs().max().item())
        assert not torch.allclose(one[0], one[1])  # different seeds, different images
