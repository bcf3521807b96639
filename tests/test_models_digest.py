"""The repository digest: read in chunks, cached between runs, never served stale."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from test_models import python_model
from tritonfleet.triton import digest
from tritonfleet.triton.digest import repository_digest
from tritonfleet.triton.models import validate_repository


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    folder = tmp_path_factory.mktemp("digest-cache") / "digests"  # outside the repositories built in tmp_path
    monkeypatch.setenv(digest.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def cached(monkeypatch):
    """Cache every repository, small ones included."""
    monkeypatch.setattr(digest, "CACHE_MIN_BYTES", 0)


def weights_repository(root: Path) -> Path:
    python_model(root, "m")
    weights = root / "m" / "1" / "weights.bin"
    weights.write_bytes(b"A" * 100_000)
    return weights


def test_digest_is_the_one_earlier_releases_were_named_after(tmp_path):
    # Value computed by the previous implementation (whole files in memory): hosts' release ids stay the same.
    r = tmp_path / "repo"
    (r / "m" / "1").mkdir(parents=True)
    (r / "m" / "config.pbtxt").write_text('backend: "python"\n')
    (r / "m" / "1" / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    (r / "m" / "1" / "weights.bin").write_bytes(bytes(range(256)) * 5000)
    (r / "m" / "1" / "empty").write_bytes(b"")
    (r / "m" / "2").mkdir()
    os.symlink("../1/model.py", r / "m" / "2" / "model.py")
    os.symlink("1", r / "m" / "latest")
    expected = "34f1e51a42c36b65e7e1d0839e989ea8f0b21745c475224b449ea4783b83bfc9"
    assert repository_digest(r) == expected


def test_chunk_boundaries_do_not_change_the_digest(tmp_path, monkeypatch):
    weights_repository(tmp_path)
    whole = repository_digest(tmp_path)
    monkeypatch.setattr(digest, "CHUNK", 7)
    assert repository_digest(tmp_path) == whole


def test_small_repository_writes_no_cache(tmp_path, cache_dir):
    weights_repository(tmp_path)
    validate_repository(tmp_path)
    assert not cache_dir.exists()


def test_unchanged_repository_is_not_read_again(tmp_path, cache_dir, cached, monkeypatch):
    weights_repository(tmp_path)
    monkeypatch.setattr(digest, "RACY_NS", 0)  # trust files changed a moment ago
    first = validate_repository(tmp_path).digest
    assert len(list(cache_dir.glob("*.json"))) == 1

    def no_reading(entries):
        raise AssertionError("an unchanged repository was read again")

    monkeypatch.setattr(digest, "_hash_entries", no_reading)
    assert validate_repository(tmp_path).digest == first


def rewrite_same_size_same_mtime(path: Path, data: bytes) -> None:
    before = path.stat()
    with open(path, "r+b") as f:  # in place: same inode
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_rewrite_within_the_same_tick_is_never_served_from_the_cache(tmp_path, cache_dir, cached):
    # The real RACY_NS: files changed within it are hashed, never cached, as a rewrite in the same clock tick
    # could keep ctime as well as size, mtime and inode.
    weights = weights_repository(tmp_path)
    first = validate_repository(tmp_path).digest
    assert not list(cache_dir.glob("*.json"))
    rewrite_same_size_same_mtime(weights, b"B")
    assert validate_repository(tmp_path).digest != first


def test_rewrite_with_restored_mtime_changes_ctime_and_the_digest(tmp_path, cache_dir, cached, monkeypatch):
    weights = weights_repository(tmp_path)
    monkeypatch.setattr(digest, "RACY_NS", 0)
    first = validate_repository(tmp_path).digest
    assert len(list(cache_dir.glob("*.json"))) == 1
    ctime = weights.stat().st_ctime_ns
    while time.time_ns() < ctime + 20_000_000:  # past the filesystem's clock tick
        time.sleep(0.005)
    rewrite_same_size_same_mtime(weights, b"B")
    assert weights.stat().st_ctime_ns != ctime
    second = validate_repository(tmp_path).digest
    assert second != first
    monkeypatch.setattr(digest, "CACHE_MIN_BYTES", 1 << 40)  # no cache at all: the digest of what is there now
    assert repository_digest(tmp_path.resolve()) == second


def test_cache_folder_that_cannot_be_written_is_no_error(tmp_path, cached, monkeypatch):
    weights_repository(tmp_path / "repo")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(digest.CACHE_ENV, str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(digest, "RACY_NS", 0)
    assert validate_repository(tmp_path / "repo").digest == validate_repository(tmp_path / "repo").digest


def test_corrupt_cache_is_ignored(tmp_path, cache_dir, cached, monkeypatch):
    weights_repository(tmp_path / "repo")
    monkeypatch.setattr(digest, "RACY_NS", 0)
    first = validate_repository(tmp_path / "repo").digest
    [cache] = cache_dir.glob("*.json")
    cache.write_text('{"root": "x", "key": ')
    assert validate_repository(tmp_path / "repo").digest == first
