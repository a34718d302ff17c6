"""The book page "Reproducing the papers' tables" (book/reproduce.md) against the package it documents.

Every command in the page's ``bash`` blocks must parse with the package's own argument parser, name shipped
configs with valid overrides, and read only what an earlier command on the page writes (a checkpoint, an exported
U-Net, a sample set). The cost table's FLOP counts are recounted from the configs' networks, its training images
are the configs' steps x batch, and every GPU-hour figure follows from its row's inputs by the page's formula.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import nbformat
import pytest
import torch

from benchmarks.perf import count_flops
from diffbook.cli.commands import default_run_dir
from diffbook.cli.parser import build_parser
from diffbook.config.load import available_configs
from diffbook.experiments import Experiment
from diffbook.experiments.imports import IMPORTERS, default_import_path
from diffbook.experiments.sampling import parse_int_ranges
from diffbook.experiments.sweep import parse_grid
from diffbook.nets.releases import RELEASES

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "book" / "reproduce.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
CHAPTERS = [
    ROOT / "notebooks" / f"{name}.ipynb"
    for name in ("03_iso_diffusion", "04_bcm", "05_self_perceptual", "06_diffit", "07_sadm", "08_comparison")
]
GFLOP_PER_GPU_HOUR = 50_000 * 3600  # the page's assumption: 50 TFLOP/s sustained
TRAINING_STAGES = ("train", "fine-tune")


def page_commands() -> list[str]:
    """The page's bash commands in order, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", PAGE, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def diffbook_argv(command: str) -> list[str]:
    """The arguments after ``python -m diffbook`` or ``torchrun ... -m diffbook``."""
    words = shlex.split(command)
    starts = [i + 2 for i in range(len(words) - 1) if words[i : i + 2] == ["-m", "diffbook"]]
    assert words[0] in ("python", "torchrun") and starts, f"not a diffbook command: {command}"
    return words[starts[0] :]


def table(header_start: str, text: str = PAGE) -> list[dict[str, str]]:
    """The markdown table of ``text`` whose header row starts with ``header_start``, as one dict per body row."""
    lines = text[text.index(header_start) :].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)))
    return rows


def leading_number(cell: str) -> re.Match[str]:
    """The number a cell starts with, e.g. ``1,049.1`` or ``14.5 (after B3)``; its decimals are group 1."""
    match = re.match(r"[\d,]+(?:\.(\d+))?", cell)
    assert match, f"a table cell that should start with a number: {cell!r}"
    return match


def number(cell: str) -> float:
    return float(leading_number(cell).group().replace(",", ""))


def shows(cell: str, value: float) -> bool:
    """Whether ``cell`` is ``value`` rounded to the digits it shows."""
    decimals = len(leading_number(cell).group(1) or "")
    return abs(value - number(cell)) <= 0.5 * 10.0**-decimals + 1e-9


def image_factors(cost: dict[str, str]) -> list[int]:
    """A cost row's images: ``390,625 × 512`` (steps × batch) -> [390625, 512]."""
    return [int(factor.replace(",", "")) for factor in cost["images"].split(" × ")]


def gpu_hours(cost: dict[str, str]) -> float:
    """The page's formula, from a cost row's own inputs."""
    forwards = number(cost["forwards per image"]) * number(cost["runs"]) * math.prod(image_factors(cost))
    return number(cost["forward GFLOPs per image"]) * forwards / GFLOP_PER_GPU_HOUR


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


COMMANDS = page_commands()
ROWS = table("| row | result |")
COSTS = table("| row | stage |")


@pytest.mark.parametrize("command", COMMANDS, ids=[command[:80] for command in COMMANDS])
def test_every_command_parses_and_names_shipped_configs(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        args = build_parser().parse_args(diffbook_argv(command))
    except SystemExit:
        pytest.fail(f"python -m diffbook rejects: {command}\n{capsys.readouterr().err}")
    if getattr(args, "config", None):
        assert args.config in available_configs(), f"{args.config} is not a shipped config"
    if args.command in ("train", "sweep"):
        Experiment.load(args.config, args.overrides)  # a bad override key or value raises


def test_every_command_reads_what_an_earlier_one_writes() -> None:
    """Checkpoints (with the config that wrote them), exported U-Nets and sample sets, in page order."""
    checkpoints: dict[Path, str] = {}
    folders: set[Path] = set()
    for command in COMMANDS:
        args = build_parser().parse_args(diffbook_argv(command))
        if args.command == "import":
            checkpoints[Path(args.out or default_import_path(args.config))] = args.config
        elif args.command == "train":
            network = Experiment.load(args.config, args.overrides).config["network"]
            for needed in (network.get("init_from"), (network.get("overrides") or {}).get("unet")):
                assert needed is None or Path(needed) in checkpoints.keys() | folders, f"{command}: {needed}"
            checkpoints[Path(args.run_dir or default_run_dir(args.config)) / "checkpoint.pt"] = args.config
        elif args.command == "export-diffusers":
            assert Path(args.ckpt) in checkpoints, command
            folders.add(Path(args.out) / "unet")
        elif args.command == "sample":
            assert Path(args.ckpt) in checkpoints, f"{command}: no earlier command writes {args.ckpt}"
            Experiment.load(checkpoints[Path(args.ckpt)], args.overrides)
            folders.add(Path(args.out))
        elif args.command == "evaluate":
            assert Path(args.samples).parent in folders, f"{command}: no earlier command samples {args.samples}"


def test_every_row_is_not_run_here_and_names_shipped_configs() -> None:
    assert [row["row"] for row in ROWS] == list(dict.fromkeys(cost["row"] for cost in COSTS))
    for row in ROWS:
        assert row["status"] == "not run here"
        assert backticked(row["configs"]) and set(backticked(row["configs"])) <= set(available_configs())


@pytest.mark.parametrize("cost", COSTS, ids=[f"{cost['row']}-{cost['stage']}-{cost['network']}" for cost in COSTS])
def test_each_cost_follows_from_its_inputs(cost: dict[str, str]) -> None:
    (config,) = backticked(cost["config"])
    if cost["stage"] in TRAINING_STAGES:
        train = Experiment.load(config).train
        assert image_factors(cost) == [train.steps, train.batch_size], f"{config}: {train.steps} x {train.batch_size}"
    hours = gpu_hours(cost)
    assert shows(cost["GPU-hours (estimate)"], hours), f"{hours:.4g} GPU-hours, the page shows {cost}"


def test_each_row_total_is_the_sum_of_its_costs() -> None:
    for row in ROWS:
        total = sum(gpu_hours(cost) for cost in COSTS if cost["row"] == row["row"])
        assert shows(row["GPU-hours (estimate)"], total), f"row {row['row']}: {total:.4g} GPU-hours"


def test_sweep_runs_are_the_grid_times_the_seeds() -> None:
    for command in COMMANDS:
        args = build_parser().parse_args(diffbook_argv(command))
        if args.command != "sweep":
            continue
        runs = len(parse_grid(args.grid)) * len(parse_int_ranges(args.seeds))
        counted = {number(cost["runs"]) for cost in COSTS if backticked(cost["config"]) == [args.config]}
        assert counted == {runs}, f"{args.config}: {runs} runs, the cost table counts {counted}"


COUNTED = sorted({backticked(cost["config"])[0] for cost in COSTS if cost["network"] == "the config's"})


@pytest.mark.parametrize("config", COUNTED)
def test_forward_flops_are_the_configs_networks(config: str) -> None:
    experiment = Experiment.load(config)
    with torch.device("meta"):
        net = experiment.network.build()
        x = torch.randn(1, *experiment.sample_shape)
        two_times = getattr(experiment.network.config(), "two_times", False)
        noise_labels = torch.ones(1, 2) if two_times else torch.ones(1)
        labels = torch.zeros(1, dtype=torch.long) if experiment.num_classes else None
        gflops = count_flops(lambda: net(x, noise_labels, labels)) / 1e9
    shown = {
        cost["forward GFLOPs per image"]
        for cost in COSTS
        if backticked(cost["config"]) == [config] and cost["network"] == "the config's"
    }
    assert all(abs(number(cell) - gflops) <= 1e-3 * gflops for cell in shown), f"{config}: {gflops:.2f} GFLOPs"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda path: path.stem)
def test_every_chapter_links_the_page(path: Path) -> None:
    markdown = "\n".join(
        cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "markdown"
    )
    assert re.search(r"\{doc\}`[^`]*\.\./book/reproduce>?`|\]\(\.\./book/reproduce\.md\)", markdown)


def test_the_licences_are_those_the_releases_record() -> None:
    on_page = table("| release | source | licence |")
    for release in RELEASES.values():
        rows = [row for row in on_page if row["source"].startswith(release.source)]
        assert [row["licence"] for row in rows] == [release.licence], f"{release.source} on the page"
    in_readme = {row["`import`"].strip("`"): row for row in table("| release | `import` |", README)}
    assert in_readme.keys() == IMPORTERS.keys()
    for name, row in in_readme.items():
        assert (row["source"].split(" ")[0], row["licence"]) == (RELEASES[name].source, RELEASES[name].licence)
    for text in (PAGE, README):
        assert "fine-tuned from non-commercial weights is non-commercial too" in " ".join(text.split())
