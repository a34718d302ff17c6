"""The cache folder for downloaded weights: where it is, and the SHA-256 check before every use."""

import hashlib
import stat

import pytest

from diffbook.cli import main
from diffbook.metrics.features import INCEPTION_FILE, inception_weights
from diffbook.runtime.files import cache_dir, cached_file, fetch_to_cache

WEIGHTS = b"stand-in for a TorchScript archive" * 1000


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFBOOK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_cache_is_diffbook_cache_else_xdg_else_home_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFBOOK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "diffbook"
    assert stat.S_IMODE(cache_dir().stat().st_mode) == 0o700
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "diffbook"
    monkeypatch.setenv("DIFFBOOK_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("as_url", [False, True], ids=["file", "url"])
def test_a_fetched_file_is_recorded_with_its_sha256_and_checked(tmp_path, cache, as_url):
    source = tmp_path / "download.bin"
    source.write_bytes(WEIGHTS)
    path = fetch_to_cache(source.as_uri() if as_url else str(source), "weights.bin")
    assert path.read_bytes() == WEIGHTS
    assert (cache / "weights.bin.sha256").read_text().split()[0] == hashlib.sha256(WEIGHTS).hexdigest()
    assert cached_file("weights.bin", "fetch it") == path

    path.write_bytes(WEIGHTS[:-1] + b"!")  # one byte changed, as by a writer that is not diffbook
    with pytest.raises(ValueError, match="recorded when it was fetched: the file changed since; fetch it"):
        cached_file("weights.bin", "fetch it")
    (cache / "weights.bin.sha256").unlink()
    with pytest.raises(ValueError, match="has no recorded SHA-256"):
        cached_file("weights.bin", "fetch it")


def test_a_file_that_is_not_the_release_is_refused_and_the_good_one_kept(tmp_path, cache):
    prefix = hashlib.sha256(WEIGHTS).hexdigest()[:8]  # as a release's name carries its digest's first digits
    (tmp_path / "good.bin").write_bytes(WEIGHTS)
    (tmp_path / "bad.bin").write_bytes(b"an error page, saved under the weights' name")
    path = fetch_to_cache(str(tmp_path / "good.bin"), "weights.bin", prefix)
    with pytest.raises(ValueError, match=f"not {prefix}... as weights.bin has"):
        fetch_to_cache(str(tmp_path / "bad.bin"), "weights.bin", prefix)
    assert path.read_bytes() == WEIGHTS and cached_file("weights.bin", "fetch it") == path
    assert sorted(p.name for p in cache.iterdir()) == ["weights.bin", "weights.bin.sha256"]


def test_fetch_inception_puts_the_weights_where_evaluate_reads_them(tmp_path, cache, capsys):
    source = tmp_path / INCEPTION_FILE
    source.write_bytes(WEIGHTS)
    assert main(["fetch-inception", "--from", str(source)]) == 0
    assert hashlib.sha256(WEIGHTS).hexdigest() in capsys.readouterr().out
    assert inception_weights() == cache / INCEPTION_FILE
    (cache / INCEPTION_FILE).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="run python -m diffbook fetch-inception"):
        inception_weights()
