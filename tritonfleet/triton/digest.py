"""The model repository's digest (its release id), read in chunks and cached between runs.

The digest is sha256 over every file's relative path, size and contents, in a stable order: the same value on
every machine and run. Read whole, a 1.5 GB weights file cost 3.1 GB of memory and seconds on every run, even a
no-op deploy. Files are hashed in 1 MiB chunks, and the digest of a large repository is cached under the control
machine's cache folder, keyed by the stat of every file, so a run over an unchanged repository reads no file.

Why the cache cannot serve a stale digest: the key holds each file's path, size, mtime, ctime, inode and device.
A rewrite in place keeps the inode and can restore size and mtime (`os.utime`), but the kernel sets ctime to the
current time on every write and every utime, and no call sets it back. Timestamps are coarse, though (a clock
tick; whole seconds on some filesystems), so a file rewritten within the same tick as the hashing could keep its
ctime: the digest is cached only when every file was last changed more than RACY_NS before hashing started (git
calls such files "racily clean").
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path

from tritonfleet import paths
from tritonfleet.errors import TritonfleetError

CACHE_ENV = "TRITONFLEET_DIGEST_CACHE"  # folder of the cache files (default: <CACHE_DIR>/digests)
# Below this many bytes hashing costs less than a run notices, and nothing is written to the cache folder.
CACHE_MIN_BYTES = 16 << 20
# A file changed less than this before hashing may change again with the same ctime (see above).
RACY_NS = 2_000_000_000
CHUNK = 1 << 20
IGNORED_NAMES = frozenset({"__pycache__", ".DS_Store"})  # never matter to Triton; left out of the digest
_KEY_FORMAT = "tritonfleet-digest-1"


def repository_digest(root: Path) -> str:
    """The digest of the repository at `root` (resolved), from the cache when no file changed."""
    started = time.time_ns()
    entries = _entries(root)
    key, size, settled = _stat_key(entries, started)
    if size < CACHE_MIN_BYTES:
        return _hash_entries(entries)
    cache = _cache_file(root)
    cached = _read_cache(cache, root, key)
    if cached:
        return cached
    digest = _hash_entries(entries)
    if settled and _stat_key(entries, started)[0] == key:  # nothing changed while it was being read
        _write_cache(cache, root, key, digest)
    return digest


def _entries(root: Path) -> list[tuple[str, Path]]:
    """(relative path, path) of every file and every symlink to a folder, sorted by relative path."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_NAMES)
        base = Path(dirpath)
        for name in list(dirnames) + filenames:
            full = base / name
            if name in IGNORED_NAMES or name.endswith(".pyc"):
                continue
            if name in filenames or full.is_symlink():
                entries.append((full.relative_to(root).as_posix(), full))
    return sorted(entries)


def _hash_entries(entries: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    buffer = bytearray(CHUNK)
    for rel, full in entries:
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        if full.is_symlink() and full.is_dir():
            data = b"link:" + os.readlink(full).encode("utf-8", "surrogateescape")
            h.update(str(len(data)).encode() + b"\0" + data)
        elif full.is_file():
            _hash_file(h, full, buffer)
        else:
            h.update(b"0\0")
    return h.hexdigest()


def _hash_file(h, path: Path, buffer: bytearray) -> None:
    """Add "<size>\\0<contents>" to `h`, reading the file in chunks."""
    view = memoryview(buffer)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode() + b"\0")
        read = 0
        while n := f.readinto(buffer):
            h.update(view[:n])
            read += n
    if read != size:
        raise TritonfleetError(f"{path} changed while its digest was computed",
                               hint="run again once nothing writes to the model repository")


def _stat_key(entries: list[tuple[str, Path]], started_ns: int) -> tuple[str, int, bool]:
    """(key of every entry's stat, bytes of file contents, whether every entry changed long enough ago)."""
    h = hashlib.sha256(_KEY_FORMAT.encode() + b"\0")
    size, settled = 0, True
    for rel, full in entries:
        found = [os.lstat(full)]
        if stat.S_ISLNK(found[0].st_mode):
            found.append(os.stat(full))  # the link's target is hashed: it is part of the key too
            h.update(os.readlink(full).encode("utf-8", "surrogateescape") + b"\0")
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        for st in found:
            h.update(f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino} {st.st_dev} {st.st_mode}\0".encode())
            settled = settled and max(st.st_mtime_ns, st.st_ctime_ns) < started_ns - RACY_NS
        if stat.S_ISREG(found[-1].st_mode):
            size += found[-1].st_size
    return h.hexdigest(), size, settled


def _cache_file(root: Path) -> Path:
    folder = Path(os.environ.get(CACHE_ENV) or paths.CACHE_DIR / "digests")
    return folder / (hashlib.sha256(os.fsencode(root)).hexdigest()[:32] + ".json")


def _read_cache(cache: Path, root: Path, key: str) -> str | None:
    try:
        entry = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(entry, dict) and entry.get("root") == str(root) and entry.get("key") == key:
        digest = entry.get("digest")
        return digest if isinstance(digest, str) and len(digest) == 64 else None
    return None


def _write_cache(cache: Path, root: Path, key: str, digest: str) -> None:
    """Best effort: a cache folder this user cannot write only makes the next run read the files again."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=cache.parent, prefix=".digest-")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"root": str(root), "key": key, "digest": digest}, f)
        os.replace(temporary, cache)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
