"""How readers get the package: the Colab cell's install command on a fresh environment, and ``make lab``.

Colab runs the notebooks' first cell, ``%pip install "diffbook[book] @ git+<repository>"``: pip builds a wheel
from the repository and installs it with the ``book`` extra. Offline, the test builds that wheel here and
installs it with the same requirement form into a fresh virtual environment. The package's dependencies (torch
above all) are too large to install again, so the fresh environment borrows them from this one; the package
itself, with its configs and weights, must come from the wheel.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import venv
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
INSTALL = re.compile(r'%pip install --quiet "diffbook\[(?P<extras>[\w,]+)\] @ git\+(?P<url>\S+)"')


def colab_extras() -> set[str]:
    """The extras the notebooks' install cell asks for (one cell, the same in every notebook)."""
    cells = {next(c for c in nbformat.read(path, 4).cells if c.cell_type == "code").source for path in NOTEBOOKS}
    assert len(cells) == 1, "the notebooks' install cells differ"
    match = INSTALL.search(cells.pop())
    assert match, "the install cell does not have the form the test expects"
    return set(match["extras"].split(","))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("diffbook-*.whl")
    return built


def test_colab_install_command_gives_a_working_package_in_a_fresh_environment(wheel: Path, tmp_path: Path) -> None:
    extras = ",".join(sorted(colab_extras()))
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    # pip --python installs into the fresh environment; its requirement is the install cell's, on the wheel.
    requirement = f"diffbook[{extras}] @ {wheel.as_uri()}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            requirement,
        ],
        check=True,
        timeout=300,
    )
    # Dependencies from this environment, after the fresh one's own site-packages would be too late for none:
    # PYTHONPATH does not run this environment's .pth files, so its editable diffbook stays out of sight.
    env = os.environ | {"PYTHONPATH": sysconfig.get_paths()["purelib"]}
    probe = (
        "import json, diffbook\n"
        "from diffbook.config import read_config\n"
        "from diffbook.metrics.features import load_digits_feature_net\n"
        "load_digits_feature_net()\n"
        "print(json.dumps({'file': diffbook.__file__, 'config': read_config('digits/edm')['network']['preset']}))"
    )
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(fresh), f"diffbook was imported from {found['file']}"
    assert found["config"] == "digits16"
    cli = subprocess.run(
        [str(python), "-m", "diffbook", "--help"], capture_output=True, text=True, env=env, timeout=300
    )
    assert cli.returncode == 0 and "train" in cli.stdout


def notebook_imports() -> set[str]:
    """Top-level modules the notebooks import, outside the standard library and the package itself."""
    modules: set[str] = set()
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, 4).cells:
            if cell.cell_type != "code":
                continue
            for node in ast.walk(ast.parse(TransformerManager().transform_cell(cell.source))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"diffbook"}


def requirement_closure(extras: set[str]) -> set[str]:
    """Every distribution that installing ``diffbook[extras]`` brings in, following installed metadata."""
    pending = [(req, extras) for req in map(Requirement, metadata.requires("diffbook") or [])]
    closure: set[str] = set()
    while pending:
        requirement, wanted = pending.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in wanted | {""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        pending.extend((Requirement(r), set(requirement.extras)) for r in requires)
    return closure


def test_the_colab_extras_bring_every_module_the_notebooks_import() -> None:
    providers = metadata.packages_distributions()
    closure = requirement_closure(colab_extras())
    missing = {
        module: providers.get(module)
        for module in notebook_imports()
        if not {canonicalize_name(dist) for dist in providers.get(module, [])} & closure
    }
    assert not missing, f"imported by notebooks but not installed by diffbook[{','.join(colab_extras())}]: {missing}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_make_lab_serves_the_notebooks_with_the_packages_kernel() -> None:
    port, token = free_port(), "diffbook-test"
    args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}"
    server = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_ARGS={args}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        specs = poll_json(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}", server, timeout=120)
        contents = poll_json(f"http://127.0.0.1:{port}/api/contents?token={token}", server, timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert specs["default"] == "python3"
    kernel = specs["kernelspecs"]["python3"]["spec"]
    assert Path(kernel["argv"][0]).resolve() == Path(sys.executable).resolve()
    assert {item["name"] for item in contents["content"]} >= {path.name for path in NOTEBOOKS}


def poll_json(url: str, server: subprocess.Popen, timeout: float) -> dict:
    """GET ``url`` until it answers, while the server process lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "make lab exited"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")
