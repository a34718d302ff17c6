"""The project's metadata: one version, one home URL, the licences and the citation, all agreeing."""

import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
import tomllib
import yaml

import diffbook
from diffbook.booktools.project import bibtex, citation, colab_install_cell, home_url, stamp
from diffbook.nets.releases import RELEASES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "exercises").glob("*.ipynb"))


def _first_code_cell(path: Path) -> str:
    return next(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")


def test_one_version_in_the_package_its_metadata_the_citation_the_changelog_and_every_colab_cell():
    version = diffbook.__version__
    assert importlib.metadata.version("diffbook") == version
    assert citation(ROOT)["version"] == version
    assert f"## {version} (" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    expected = colab_install_cell(home_url(ROOT), version)
    assert f"@v{version}" in expected
    assert {path.name: _first_code_cell(path) == expected for path in NOTEBOOKS} == dict.fromkeys(
        (path.name for path in NOTEBOOKS), True
    )


def _text_outside_the_colab_cell(path: Path, url: str) -> str:
    if path.suffix != ".ipynb":
        return path.read_text(encoding="utf-8", errors="ignore")
    cells = nbformat.read(path, as_version=4).cells
    first = next(index for index, cell in enumerate(cells) if cell.cell_type == "code")
    if cells[first].source == colab_install_cell(url):  # the stamped cell; a copy anywhere else counts
        del cells[first]
    return json.dumps(cells)


def test_the_home_url_is_written_only_in_pyproject_and_the_stamped_colab_cells():
    url = home_url(ROOT)
    assert url.startswith("https://github.com/") and url.count("/") == 4
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    paths = [ROOT / name for name in tracked.splitlines() if name != "pyproject.toml"]
    text_files = [path for path in paths if path.is_file() and path.suffix not in (".png", ".pt", ".npz")]
    assert [path.name for path in text_files if url in _text_outside_the_colab_cell(path, url)] == []


def test_stamp_rewrites_an_old_cell_and_leaves_a_current_repository_unchanged(tmp_path):
    for part in ("notebooks", "exercises"):
        shutil.copytree(ROOT / part, tmp_path / part)
    for name in ("pyproject.toml", "CITATION.cff"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert stamp(tmp_path) == []  # the committed files are stamped already

    notebook = tmp_path / "notebooks" / NOTEBOOKS[0].name
    notebook.write_text(notebook.read_text(encoding="utf-8").replace(f"@v{diffbook.__version__}", "@v0.0.1", 1))
    assert _first_code_cell(notebook) == colab_install_cell(home_url(ROOT), "0.0.1")
    cff = tmp_path / "CITATION.cff"
    cff.write_text(cff.read_text(encoding="utf-8").replace(f'"{diffbook.__version__}"', '"0.0.1"'), encoding="utf-8")
    assert stamp(tmp_path) == [notebook, cff]
    assert _first_code_cell(notebook) == colab_install_cell(home_url(ROOT))
    assert notebook.read_bytes() == (ROOT / "notebooks" / notebook.name).read_bytes()
    assert cff.read_bytes() == (ROOT / "CITATION.cff").read_bytes()


def test_the_citation_is_valid_cff_and_its_bibtex_names_the_version_and_home():
    cff = citation(ROOT)
    assert cff["cff-version"] == "1.2.0" and {"message", "title", "authors", "version"} <= cff.keys()
    assert cff["license"] == ["MIT", "CC-BY-4.0"]
    entry = bibtex(ROOT)
    assert entry.startswith("@book{diffbook,") and entry.endswith("}")
    assert f"edition   = {{{diffbook.__version__}}}" in entry and f"url       = {{{home_url(ROOT)}}}" in entry
    assert f"year      = {{{cff['date-released'].year}}}" in entry


def test_the_licences_are_stated_where_a_user_looks():
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    assert all(release.licence in notice and release.source in notice for release in RELEASES.values())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "MIT" in readme and "CC BY 4.0" in readme and "NOTICE" in readme
    with open(ROOT / "pyproject.toml", "rb") as file:
        assert tomllib.load(file)["project"]["license"] == "MIT"
    assert "{cite-this-book}" in (ROOT / "book" / "preface.md").read_text(encoding="utf-8")
    assert yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["local_extensions"]["project_metadata"]


@pytest.mark.parametrize("release", RELEASES.values(), ids=RELEASES.keys())
def test_a_release_notice_says_what_its_licence_allows(release):
    notice = release.notice()
    assert release.licence in notice and release.name in notice
    assert ("non-commercial use only" in notice) == release.non_commercial
