"""The notation page's table of preconditionings is what the package computes: each cell, read as the formula it
shows, equals the process's own ``scalings`` at noise levels from 0.002 to 80."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from diffbook.diffusion import DDPM, EDM, VE, VP
from diffbook.diffusion.consistency import BCMProcess

NOTATION = Path(__file__).resolve().parents[1] / "book" / "notation.md"
SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 3.0, 80.0], dtype=torch.float64)
SIGMA_DATA = 0.5

# Each cell of the page, and the formula it shows, in sigma (s); t_of and tau_of are the processes' own maps.
CELLS = {
    r"$1$": lambda s: torch.ones_like(s),
    r"$0$": lambda s: torch.zeros_like(s),
    r"$-\sigma$": lambda s: -s,
    r"$\sigma$": lambda s: s,
    r"$1/\sqrt{\sigma^2+1}$": lambda s: 1 / (s**2 + 1).sqrt(),
    r"$1/(\sigma^2+1)$": lambda s: 1 / (s**2 + 1),
    r"$-\sigma/\sqrt{\sigma^2+1}$": lambda s: -s / (s**2 + 1).sqrt(),
    r"$\ln(\sigma/2)$": lambda s: (s / 2).log(),
    r"$\sigma_d^2/(\sigma^2+\sigma_d^2)$": lambda s: SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2),
    r"$\sigma\sigma_d/\sqrt{\sigma^2+\sigma_d^2}$": lambda s: s * SIGMA_DATA / (s**2 + SIGMA_DATA**2).sqrt(),
    r"$1/\sqrt{\sigma^2+\sigma_d^2}$": lambda s: 1 / (s**2 + SIGMA_DATA**2).sqrt(),
    r"$\tfrac14\ln\sigma$": lambda s: s.log() / 4,
}
ROWS = {
    "DDPM, $\\epsilon$-prediction (`ddpm`)": DDPM(prediction="eps"),
    "DDPM, $x_0$-prediction": DDPM(prediction="x0"),
    "DDPM, $v$-prediction": DDPM(prediction="v"),
    "VP SDE (`vp`)": VP(),
    "VE SDE (`ve`)": VE(),
    "EDM (`edm`)": EDM(sigma_data=SIGMA_DATA),
}


def page_rows() -> dict[str, list[str]]:
    section = NOTATION.read_text(encoding="utf-8").split("## Every process in one table", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[1:]}


def noise_label(process, cell: str, sigma: torch.Tensor) -> torch.Tensor:
    if cell == r"$t(\sigma)$":
        return process.sigma_to_t(sigma)
    if cell == r"$(M-1)\,\tau(\sigma)$":
        return (process.M - 1) * process.sigma_inv(sigma)
    return CELLS[cell](sigma)


@pytest.mark.parametrize("row", list(ROWS))
def test_each_processs_row_is_its_scalings(row):
    process, cells = ROWS[row], page_rows()[row]
    sigma = SIGMAS if not isinstance(process, DDPM) else SIGMAS.clamp(max=float(process.sigmas.max()))
    computed = process.scalings(sigma)
    for name, cell, value in zip(("c_skip", "c_out", "c_in", "c_noise"), cells, computed, strict=True):
        expected = noise_label(process, cell, sigma) if name == "c_noise" else CELLS[cell](sigma)
        torch.testing.assert_close(value.double(), expected.double(), rtol=1e-6, atol=1e-9, msg=f"{row}: {name}")


def test_the_bcm_row_is_the_two_time_scalings():
    process = BCMProcess(sigma_data=SIGMA_DATA)
    assert page_rows()["BCM, the jump $t \\to u$ (`bcm`)"] == [
        r"$(tu+\sigma_d^2)/(t^2+\sigma_d^2)$",
        r"$(t-u)\,\sigma_d/\sqrt{t^2+\sigma_d^2}$",
        r"$1/\sqrt{t^2+\sigma_d^2}$",
        r"$250\ln t$, $250\ln u$",
    ]
    t, u = SIGMAS[1:], SIGMAS[:-1]
    c_skip, c_out, c_in = process.scalings(t, u)
    d2 = SIGMA_DATA**2
    torch.testing.assert_close(c_skip, (t * u + d2) / (t**2 + d2))
    torch.testing.assert_close(c_out, (t - u) * SIGMA_DATA / (t**2 + d2).sqrt())
    torch.testing.assert_close(c_in, 1 / (t**2 + d2).sqrt())
    torch.testing.assert_close(process.noise_label(t), 250 * t.log())


def test_the_page_has_a_row_for_every_process():
    assert set(page_rows()) == set(ROWS) | {"BCM, the jump $t \\to u$ (`bcm`)"}
    assert all(re.fullmatch(r"\$.*\$(, \$.*\$)?", cell) for cells in page_rows().values() for cell in cells)
