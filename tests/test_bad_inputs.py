"""Every mistake a user can make on the command line is one line on stderr and exit status 2, and touches no run.

Each case runs ``python -m diffbook`` (in process) against a trained run, a run with a corrupt checkpoint and
folders of images, then checks the status, the words of the message, that no traceback was printed, and that
both run folders are unchanged byte for byte.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffbook.cli import main

RUN, CORRUPT, T = "{run}", "{corrupt}", "{tmp}"
TRAIN = ("train", "--config", "toy/edm", "train.steps=2")
SAMPLE = ("sample", "--ckpt", f"{RUN}/checkpoint.pt", "--seeds", "0-3", "--out", f"{T}/samples")

CASES = {
    # train: values, keys, configs and files
    "steps-not-a-number": ((*TRAIN, "train.steps=abc", "--run-dir", RUN), "train.steps must be an integer, got 'abc'"),
    "steps-a-fraction": ((*TRAIN, "train.steps=2.5", "--run-dir", RUN), "train.steps must be an integer, got 2.5"),
    "lr-a-word": ((*TRAIN, "train.lr=fast", "--run-dir", RUN), "train.lr must be a number, got 'fast'"),
    "misspelled-key": ((*TRAIN, "train.stpes=3", "--run-dir", RUN), "closest valid keys: train.steps"),
    "unknown-config": (("train", "--config", "toy/edmm", "--run-dir", RUN), "unknown config 'toy/edmm'"),
    "missing-config-file": (("train", "--config", f"{T}/missing.yaml", "--run-dir", RUN), "missing.yaml' not found"),
    "config-not-yaml": (("train", "--config", f"{T}/bad.yaml", "--run-dir", RUN), "is not valid YAML"),
    "override-not-yaml": ((*TRAIN, "train.steps=[1,", "--run-dir", RUN), "the value '[1,' is not valid YAML"),
    "override-without-value": ((*TRAIN, "train.steps", "--run-dir", RUN), "an override is key.sub=value"),
    "zero-steps": ((*TRAIN, "train.steps=0", "--run-dir", RUN), "steps must be >= 1, got 0"),
    "zero-batch": ((*TRAIN, "train.batch_size=0", "--run-dir", RUN), "batch_size must be >= 1, got 0"),
    "unknown-precision": ((*TRAIN, "train.precision=fp8", "--run-dir", RUN), "train.precision must be one of"),
    "unknown-sampler": ((*TRAIN, "sample.sampler=nope", "--run-dir", RUN), "sample.sampler must be one of"),
    "unknown-network": ((*TRAIN, "network.kind=foo", "--run-dir", RUN), "network.kind must be one of"),
    "unknown-dataset": ((*TRAIN, "data.name=nope", "--run-dir", RUN), "data.name must be one of"),
    # train: run folders of another config, corrupt checkpoints, a diverging loss
    "run-of-another-config": (
        ("train", "--config", "digits/edm", "--run-dir", RUN),
        "data.name: 'eight_gaussians' -> 'digits'",
    ),
    "changed-learning-rate": ((*TRAIN, "train.steps=4", "train.lr=0.5", "--run-dir", RUN), "train.lr: 0.002 -> 0.5"),
    "changed-batch-size": ((*TRAIN, "train.steps=4", "train.batch_size=8", "--run-dir", RUN), "batch_size: 256 -> 8"),
    "resume-corrupt-checkpoint": ((*TRAIN, "--run-dir", CORRUPT), "corrupt or not a diffbook checkpoint"),
    "loss-becomes-nan": (
        (*TRAIN, "train.lr=1e30", "train.warmup_steps=0", "--run-dir", f"{T}/diverged"),
        "the loss became nan at step 1; lower the learning rate",
    ),
    "released-weights-not-imported": (
        ("train", "--config", "imagenet256/sadm", "--run-dir", f"{T}/sadm"),
        "runs/imagenet256-dit-release/checkpoint.pt' not found: import the released weights: python -m diffbook "
        "import dit DiT-XL-2-256x256.pt --config imagenet256/dit --out runs/imagenet256-dit-release/checkpoint.pt",
    ),
    # sample
    "seeds-backwards": (("sample", "--ckpt", f"{RUN}/checkpoint.pt", "--seeds", "3-1", "--out", T), "runs backwards"),
    "seeds-not-numbers": (("sample", "--ckpt", f"{RUN}/checkpoint.pt", "--seeds", "0-x", "--out", T), "bad seeds"),
    "missing-checkpoint": (("sample", "--ckpt", f"{T}/none.pt", "--seeds", "0", "--out", T), "none.pt' not found"),
    "sample-corrupt-checkpoint": (
        ("sample", "--ckpt", f"{CORRUPT}/checkpoint.pt", "--seeds", "0", "--out", T),
        "corrupt or not a diffbook checkpoint",
    ),
    "sample-misspelled-key": ((*SAMPLE, "sample.stpes=5"), "unknown config key 'sample.stpes'"),
    "labels-for-unconditional": ((*SAMPLE, "--class-labels", "0-9"), "the model is unconditional"),
    "vae-for-pixels": ((*SAMPLE, "--vae", "x"), "a VAE was given, but the model samples pixels"),
    "prompt-for-unconditional": ((*SAMPLE, "--prompt", "cat"), "the model is not text-conditioned"),
    "checkpoint-of-another-config": (
        (*SAMPLE, "--config", "digits/edm"),
        "holds weights of another model: 106 missing (net.conv_in.weight",
    ),
    "zero-batch-size": ((*SAMPLE, "--batch", "0"), "argument --batch: expected a whole number >= 1, got 0"),
    # evaluate
    "missing-samples": (("evaluate", "--samples", f"{T}/none", "--ref", "digits"), "none' not found"),
    "unknown-metric": (("evaluate", "--samples", f"{T}/grey", "--ref", "digits", "--metrics", "fid,foo"), "foo"),
    "unknown-reference": (("evaluate", "--samples", f"{T}/grey", "--ref", "nope"), "unknown image dataset 'nope'"),
    "stats-for-digits": (
        ("evaluate", "--samples", f"{T}/grey", "--ref", "digits", "--ref-stats", "clean"),
        "--ref-stats holds Inception statistics",
    ),
    "inception-not-fetched": (
        ("evaluate", "--samples", f"{T}/grey", "--ref", "digits", "--features", "inception"),
        "run python -m diffbook fetch-inception",
    ),
    "colour-for-digits-net": (
        ("evaluate", "--samples", f"{T}/rgb", "--ref", "digits"),
        "reads square one-channel images, got images of shape (3, 32, 32)",
    ),
    "too-few-samples": (("evaluate", "--samples", f"{T}/grey", "--ref", "digits"), "needs more than k points"),
    # sweep and benchmark
    "grid-without-values": (
        ("sweep", "--config", "toy/edm", "--grid", "train.lr", "--seeds", "0", "--out", f"{T}/sweep"),
        "a grid axis is key=v1,v2",
    ),
    "grid-misspelled-key": (
        ("sweep", "--config", "toy/edm", "--grid", "train.stpes=1,2", "--seeds", "0", "--out", f"{T}/sweep"),
        "closest valid keys: train.steps",
    ),
    "grid-bad-values": (
        ("sweep", "--config", "toy/edm", "--grid", "train.lr=fast,slow", "--seeds", "0", "--out", f"{T}/sweep"),
        "train.lr must be a number, got 'fast'",
    ),
    "sweep-bad-seeds": (
        ("sweep", "--config", "toy/edm", "--grid", "train.lr=1,2", "--seeds", "x", "--out", f"{T}/sweep"),
        "bad seeds 'x'",
    ),
    "benchmark-zero-seeds": (("benchmark", "--suite", "toy", "--seeds", "0"), "argument --seeds: expected a whole"),
    "benchmark-zero-jobs": (("benchmark", "--suite", "toy", "--jobs", "0"), "argument --jobs: expected a whole"),
    "benchmark-unknown-suite": (("benchmark", "--suite", "cifar"), "argument --suite: invalid choice: 'cifar'"),
    # importers
    "import-missing-release": (
        ("import", "dit", f"{T}/none.pt", "--out", f"{T}/dit.pt"),
        "none.pt' not found: download it on a machine with internet from https://dl.fbaipublicfiles.com",
    ),
    "import-missing-diffit-release": (
        ("import", "diffit", f"{T}/diffit_256.safetensors", "--out", f"{T}/diffit.pt"),
        "diffit_256.safetensors' not found: download diffit_256.safetensors or diffit_512.safetensors from "
        "https://huggingface.co/nvidia/DiffiT",
    ),
    "import-corrupt-release": (
        ("import", "dit", f"{CORRUPT}/checkpoint.pt", "--out", f"{T}/dit.pt"),
        "is corrupt or not a released DiT checkpoint",
    ),
    "import-corrupt-safetensors": (
        ("import", "diffit", f"{CORRUPT}/diffit_256.safetensors", "--out", f"{T}/diffit.pt"),
        "is corrupt or not a released DiffiT checkpoint (safetensors cannot read it",
    ),
    "import-a-diffbook-checkpoint": (
        ("import", "dit", f"{RUN}/checkpoint.pt", "--out", f"{T}/dit.pt"),
        "unexpected key 'step' in the released DiT state dict",
    ),
    "import-into-a-non-dit-config": (
        ("import", "dit", f"{RUN}/checkpoint.pt", "--out", f"{T}/dit.pt", "--config", "toy/edm"),
        "toy/edm has network.kind 'mlp'; the DiT-XL/2 weights fill a 'dit' network (e.g. --config imagenet256/dit)",
    ),
    "import-unknown-release": (
        ("import", "sd", f"{RUN}/checkpoint.pt"),
        "argument release: invalid choice: 'sd'",
    ),
    "fetch-missing-file": (("fetch-inception", "--from", f"{T}/none.pt"), "none.pt: No such file or directory"),
}


def _snapshot(directory: Path) -> dict[str, bytes]:
    files = sorted(path for path in directory.rglob("*") if path.is_file())
    return {str(path.relative_to(directory)): path.read_bytes() for path in files}


def _images(directory: Path, shape: tuple[int, ...]) -> None:
    directory.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (4, *shape), dtype=np.uint8)
    for k, image in enumerate(pixels):
        Image.fromarray(image).save(directory / f"{k:06d}.png")


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    run, corrupt = tmp / "run", tmp / "corrupt"
    assert main([*TRAIN, "train.log_every=1", "--run-dir", str(run)]) == 0
    corrupt.mkdir()
    (corrupt / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    (corrupt / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:1000])
    (corrupt / "diffit_256.safetensors").write_bytes((run / "checkpoint.pt").read_bytes()[:1000])
    (tmp / "bad.yaml").write_text("train:\n  steps: [1,\n")
    _images(tmp / "grey", (8, 8))
    _images(tmp / "rgb", (32, 32, 3))
    return {"run": run, "corrupt": corrupt, "tmp": tmp}


def _status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's own errors
        return int(exit_.code or 0)


def test_the_table_covers_every_command():
    commands = {argv[0] for argv, _ in CASES.values()}
    assert commands >= {"train", "sample", "evaluate", "sweep", "benchmark", "import", "fetch-inception"}
    assert len(CASES) >= 30


@pytest.mark.parametrize(("argv", "words"), CASES.values(), ids=CASES.keys())
def test_a_bad_input_is_one_line_and_exit_2_and_changes_no_run(places, capsys, monkeypatch, argv, words):
    monkeypatch.setenv("DIFFBOOK_CACHE", str(places["tmp"] / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    before = {name: _snapshot(places[name]) for name in ("run", "corrupt")}
    status = _status([arg.format(**places) for arg in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.strip() and ": warning: " not in line]
    assert status == 2
    assert words in err and "Traceback" not in err
    assert len(errors) == 1 and ": error: " in errors[0]
    assert {name: _snapshot(places[name]) for name in ("run", "corrupt")} == before
