"""The package against the tools people would otherwise use, side by side, on the same work: a table of ratios.

    make bench                                                    # this machine, CPU scale, into RESULTS.md
    python -m benchmarks.peers --sections networks samplers       # a part of it, printed only
    python -m benchmarks.peers --device cuda --scale full --precision bf16 --compile --channels-last \\
        --results benchmarks/RESULTS.md                           # a GPU at the configs' batch sizes

Peers (see ``benchmarks.perf.peers``): diffusers' ``UNet2DModel`` and ``DiTTransformer2DModel`` laid out as the
package's U-Nets and DiT, diffusers' DDIM, EDM-Euler and Heun schedulers, torchvision's CIFAR-10 with the usual
transforms, and clean-fid's folder FID with the same feature network. Ours and the peer's run in turns, round
after round, on the same device, batch and precision; the table gives medians, ``ours/peer`` and the targets:
no slower than the peer at an equal parameter count, a sampler's own cost under 5 % of a network call. With
``--results`` the table replaces this device's section of that file, and every row that missed its target gets
the torch profiler's top operators of our side.
"""

from __future__ import annotations

import argparse
import datetime
from importlib.metadata import version
from pathlib import Path

import torch

from benchmarks.perf import describe_device
from benchmarks.perf.results import write_marked_section
from benchmarks.perf.suite import SCALES, SECTIONS, Row, Settings, run

COLUMNS = "| comparison | setting | ours | peer | unit | ours/peer | target | met |"


def format_row(row: Row) -> str:
    targets = []
    if row.target is not None:
        targets.append(f"{'>=' if row.higher_is_better else '<='} {row.target:.2f}")
    if row.goal:
        targets.append(row.goal)
    met = {True: "yes", False: "**no**", None: ""}[row.met]
    peer, ratio = ("", "") if row.peer is None else (f"{row.peer:.4g}", f"{row.ratio:.2f}")
    if row.spread:
        ratio += f" ± {row.spread * row.ratio:.2f}"
    cells = [row.name, row.setting, f"{row.ours:.4g}", peer, row.unit, ratio, "; ".join(targets), met]
    return "| " + " | ".join(cells) + " |"


def header(args: argparse.Namespace, settings: Settings) -> str:
    options = [settings.precision] + ["torch.compile"] * settings.compile + ["channels-last"] * settings.channels_last
    software = ", ".join(f"{name} {version(name)}" for name in ("torch", "diffusers", "clean-fid", "torchvision"))
    return (
        f"{datetime.date.today().isoformat()}, {describe_device(settings.device)}, {', '.join(options)}, "
        f"scale `{args.scale}`; {software}. Median of {settings.rounds} timed rounds after {settings.warmup} "
        "warm-up, ours and the peer's in turns (A B, B A, ...); ± is the ratio's noise (half the interquartile "
        "ranges, combined)."
    )


def profiles(rows: list[Row]) -> str:
    """The torch profiler's top operators of our side of every row that missed a target."""
    return "\n\n".join(f"#### {row.name}\n\n```\n{row.operators}\n```" for row in rows if row.operators)


def section_key(settings: Settings, scale: str, sections: list[str]) -> str:
    options = ["compile"] * settings.compile + ["channels-last"] * settings.channels_last
    return "-".join([settings.device.type, scale, settings.precision, *options, *sections])


def write_section(path: Path, key: str, text: str) -> None:
    """Replace (or append) the block between this key's markers in ``path``."""
    write_marked_section(path, f"peers.py {key}", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", choices=tuple(SCALES), default=None, help="default: full on a GPU, cpu on a CPU")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides' networks")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory for the U-Nets")
    parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for FLOPs utilisation")
    parser.add_argument("--sections", nargs="+", choices=tuple(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--results", type=Path, help="write the table into this Markdown file's section")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.scale = args.scale or ("full" if device.type == "cuda" else "cpu")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    settings = Settings(device, args.precision, args.compile, args.channels_last, args.warmup, args.rounds, peak)

    intro = header(args, settings)
    print(intro + "\n\n" + COLUMNS + "\n" + "|---" * 8 + "|", flush=True)
    rows = run(args.sections, settings, SCALES[args.scale], lambda row: print(format_row(row), flush=True))
    missed = profiles(rows)
    if missed:
        print("\nTop operators of the rows that missed a target:\n\n" + missed)
    if args.results:
        table = "\n".join([COLUMNS, "|---" * 8 + "|", *map(format_row, rows)])
        options = ", the peers' U-Nets in channels-last too" if settings.channels_last else ""
        title = f"## `peers.py`: ours against diffusers, torchvision and clean-fid ({args.device}{options})"
        body = f"{title}\n\n{intro}\n\n{table}"
        if missed:
            body += "\n\n### Profiles of the rows that missed a target\n\n" + missed
        write_section(args.results, section_key(settings, args.scale, args.sections), body)
        print(f"\nWrote {args.results}")


if __name__ == "__main__":
    main()
