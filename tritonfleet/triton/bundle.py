"""The Triton bundle: a versioned, checksummed tarball of a complete /opt/tritonserver tree.

Hosts are offline, so the control machine builds the bundle once, caches it under
CACHE_DIR/bundles and pushes it over SSH. The default source is the PyPI wheel
nvidia-pytriton (pinned by version AND sha256 below), which ships a full Triton that runs on CPU;
an /opt/tritonserver tree exported from the NGC container (directory or tarball) is accepted too.

Layout inside the tarball, relative to the release root (the host links it to /opt/tritonserver):

    bin/tritonserver
    lib/*.so*
    backends/python/libtriton_python.so
    backends/python/triton_python_backend_utils.py
    python_backend_stubs/3.X/triton_python_backend_stub     (one per Python minor)
    caches/local/libtritoncache_local.so
    TRITON_VERSION
    tritonfleet-bundle.json                                  (the manifest)

Beside the tarball, its sidecar .json records its checksum, its backends and its Platform: the architecture, glibc
and libstdc++ its ELF files need, the libpython each stub links and whether its Python backend takes numpy 2, so
the preflight can refuse a host before anything is pushed.

No stub is shipped in backends/python: provisioning copies the one matching the host's python3 there
and chowns it to the service user (the Python backend chmods the stub at every model load, so the
service user must own it).

The stubs (and libtriton_python.so) of the wheel carry the wheel's RPATH
($ORIGIN/../../../../nvidia_pytriton.libs), which does not exist in this layout: tritonserver must run
with LD_LIBRARY_PATH=<root>/lib so that the stub it spawns finds libcudart; without it the stub cannot
start and the server hangs while loading Python models.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterable

from tritonfleet.errors import TritonfleetError
from tritonfleet.paths import CACHE_DIR

# --- the pinned default source -------------------------------------------------------------------
# Checked against `pip download --no-deps --require-hashes nvidia-pytriton==0.7.0` from PyPI.
PYTRITON_VERSION = "0.7.0"
PYTRITON_PLATFORM = "manylinux_2_35_x86_64"
PYTRITON_WHEEL = f"nvidia_pytriton-{PYTRITON_VERSION}-py3-none-{PYTRITON_PLATFORM}.whl"
PYTRITON_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
PYTRITON_TRITON_VERSION = "2.51.0"  # pytriton 0.7.0 embeds Triton r24.10; the wheel records no version

MANIFEST_NAME = "tritonfleet-bundle.json"
STUB_NAME = "triton_python_backend_stub"
BUNDLE_FORMAT = 1  # bump when the layout or packing changes, so cached builds are not reused
TAR_MTIME = 946684800  # 2000-01-01: a fixed mtime keeps the tarball byte-for-byte reproducible
GZIP_LEVEL = 6
_CHUNK = 1 << 20

Progress = Callable[[str], None]


# --- public API ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bundle:
    """A built bundle in the cache: what to push and what it can serve."""

    path: Path                           # the .tar.gz
    sha256: str
    size: int
    bundle_id: str                       # "triton-2.51.0-<sha12>"
    triton_version: str                  # "2.51.0"
    python_versions: tuple[str, ...]     # ("3.8", "3.9", "3.10", ...)
    backends: tuple[str, ...] = ()       # ("python",): the backends a model's config may name
    platform: Platform = field(default_factory=lambda: Platform())  # what a host needs to run it

    def stub_path(self, python_version: str) -> str:
        """Path, inside the bundle, of the stub for the host's Python; fails early when there is none,
        because a missing/mismatched stub otherwise only shows up as a hung model load."""
        version = _minor(python_version)
        if version not in self.python_versions:
            have = ", ".join(self.python_versions) or "none"
            raise TritonfleetError(
                f"bundle {self.bundle_id} has no Python backend stub for Python {version} "
                f"(the host's python3); it has stubs for Python {have}",
                file=str(self.path),
                hint=f"give the host one of Python {have} as python3, or build a bundle "
                     f"(`invoke bundle --source ...`) from a Triton tree with a stub built for "
                     f"Python {version}")
        return f"python_backend_stubs/{version}/{STUB_NAME}"


def build_bundle(source: str | Path | None = None, progress: Progress = print) -> Bundle:
    """Build (or reuse from the cache) the bundle for `source`.

    `source`: None = the pinned nvidia-pytriton wheel (fetched with pip, hash-checked);
    a directory or a tarball holding an /opt/tritonserver tree; or a local copy of the pinned wheel.
    A cached build is reused without re-packing when its source identity is unchanged.
    """
    bundles_dir = _cache_dir() / "bundles"
    if source is None:
        source_id = _pinned_source_id()
        cached = _reuse(bundles_dir, source_id, progress)
        if cached:
            return cached
        wheel = _fetch_pinned_wheel(progress)
        return _build_from_wheel(wheel, source_id, bundles_dir, progress)

    src = Path(source).expanduser()
    if not src.exists():
        raise TritonfleetError(f"bundle source {src} does not exist", file=str(src),
                               hint="pass a directory or a tarball holding an /opt/tritonserver tree")
    src = src.resolve()
    if src.is_file() and src.suffix == ".whl":
        digest = _sha256_file(src)
        if digest != PYTRITON_SHA256:
            raise TritonfleetError(
                f"wheel {src.name} is not the pinned nvidia-pytriton {PYTRITON_VERSION} "
                f"(sha256 {digest}, expected {PYTRITON_SHA256})", file=str(src),
                hint="omit the source to use the pinned wheel, or pass an /opt/tritonserver tree")
        source_id = _pinned_source_id()
        cached = _reuse(bundles_dir, source_id, progress)
        if cached:
            return cached
        return _build_from_wheel(src, source_id, bundles_dir, progress)

    if src.is_dir():
        root = _find_tree_root(src)
        source_id = f"format={BUNDLE_FORMAT};directory:{src};stat={_tree_fingerprint(root)}"
        cached = _reuse(bundles_dir, source_id, progress)
        if cached:
            return cached
        entries, version = _entries_from_tree(root, progress)
        return _pack(entries, version, f"directory:{src}", source_id, bundles_dir, progress)

    if src.is_file() and tarfile.is_tarfile(src):
        progress(f"hashing {src.name}")
        digest = _sha256_file(src)
        source_id = f"format={BUNDLE_FORMAT};tarball:sha256={digest}"
        cached = _reuse(bundles_dir, source_id, progress)
        if cached:
            return cached
        bundles_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".extract-", dir=bundles_dir) as tmp:
            progress(f"extracting {src.name}")
            _safe_extract(src, Path(tmp))
            root = _find_tree_root(Path(tmp), shown=src)
            entries, version = _entries_from_tree(root, progress, shown=src)
            return _pack(entries, version, f"tarball:{src.name} sha256:{digest}", source_id,
                         bundles_dir, progress)

    raise TritonfleetError(f"cannot use {src} as a bundle source", file=str(src),
                           hint="pass a directory or a tarball (.tar, .tar.gz, ...) holding an "
                                "/opt/tritonserver tree, or nothing for the pinned nvidia-pytriton wheel")


def load_bundle(path: str | Path, verify: bool = False) -> Bundle:
    """Read a built bundle from its sidecar .json (the .tar.gz or the .json may be given).

    Size is always checked (cheap); the full sha256 only with verify=True, before a push, because
    hashing hundreds of MB on every command would be slow.
    """
    path = Path(path)
    name = path.name
    if name.endswith(".json"):
        tar_path, json_path = path.with_name(name[:-len(".json")] + ".tar.gz"), path
    elif name.endswith(".tar.gz"):
        tar_path, json_path = path, path.with_name(name[:-len(".tar.gz")] + ".json")
    else:
        raise TritonfleetError(f"{path} is not a tritonfleet bundle (.tar.gz)", file=str(path))
    hint = "run `invoke bundle` again to rebuild it"
    try:
        meta = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise TritonfleetError(f"bundle metadata {json_path.name} is missing next to {tar_path.name}",
                               file=str(json_path), hint=hint) from None
    except (OSError, ValueError) as exc:
        raise TritonfleetError(f"cannot read bundle metadata: {exc}", file=str(json_path),
                               hint=hint) from None
    try:
        meta = _completed(meta, tar_path, json_path)
        bundle = Bundle(path=tar_path, sha256=meta["sha256"], size=int(meta["size"]),
                        bundle_id=meta["bundle_id"], triton_version=meta["triton_version"],
                        python_versions=tuple(meta["python_versions"]), backends=tuple(meta["backends"]),
                        platform=Platform.from_meta(meta["platform"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TritonfleetError(f"bundle metadata lacks or mangles {exc}", file=str(json_path),
                               hint=hint) from None
    try:
        size = tar_path.stat().st_size
    except FileNotFoundError:
        raise TritonfleetError(f"bundle tarball {tar_path.name} is missing", file=str(tar_path),
                               hint=hint) from None
    if size != bundle.size:
        raise TritonfleetError(f"bundle tarball is {size} bytes, its metadata says {bundle.size}",
                               file=str(tar_path), hint=hint)
    if verify:
        digest = _sha256_file(tar_path)
        if digest != bundle.sha256:
            raise TritonfleetError(f"bundle tarball has sha256 {digest}, its metadata says "
                                   f"{bundle.sha256} (corrupted or replaced)",
                                   file=str(tar_path), hint=f"delete it and {hint}")
    return bundle


def default_bundle(progress: Progress = print) -> Bundle:
    """The cached bundle of the pinned wheel, built on first use (no download when cached)."""
    return build_bundle(None, progress=progress)


def resolve_bundle(source: str | Path | None, progress: Progress = print) -> Bundle:
    """What `--bundle` names: nothing (the pinned wheel), a built bundle (.tar.gz with its .json), or a
    directory or tarball of /opt/tritonserver to build one from."""
    if source is None:
        return default_bundle(progress)
    name = Path(source).name
    if name.endswith(".json") or (name.endswith(".tar.gz") and
                                  Path(source).with_name(name[:-len(".tar.gz")] + ".json").exists()):
        return load_bundle(source, verify=True)
    return build_bundle(source, progress=progress)


# --- ELF: what the bundle's binaries need from a host -------------------------------------------
# Pure Python so the control machine needs neither binutils nor an x86 loader (a Mac works too).

_DT_NAMES = {1: "needed", 15: "rpath", 29: "runpath", 14: "soname"}
_DT_STRTAB, _DT_VERNEED, _DT_VERNEEDNUM = 5, 0x6FFFFFFE, 0x6FFFFFFF
# e_machine -> what `uname -m` (and rpm) call the architecture; dpkg's names are mapped in engine/evidence.py.
_MACHINES = {62: "x86_64", 183: "aarch64", 21: "ppc64le", 22: "s390x", 3: "i686", 40: "armv7l", 243: "riscv64"}


class _Elf:
    """One ELF file's header, dynamic section and version needs, read from its bytes."""

    def __init__(self, data: bytes, name: str):
        if data[:4] != b"\x7fELF":
            raise ValueError(f"{name} is not an ELF file")
        cls, enc = data[4], data[5]
        if cls not in (1, 2) or enc not in (1, 2):
            raise ValueError(f"{name}: unsupported ELF class/encoding")
        self.data, self.name = data, name
        self.e = "<" if enc == 1 else ">"
        self.is64 = cls == 2
        self.machine_number, = struct.unpack_from(self.e + "H", data, 18)
        self.loads, self.dynamic = self._segments()
        self.tags = self._dynamic_tags()
        strtab = self.tags.get(_DT_STRTAB, [None])[0]
        self.strtab = None if strtab is None else self.offset(strtab)

    def _segments(self):
        e, data = self.e, self.data
        if self.is64:
            phoff, = struct.unpack_from(e + "Q", data, 0x20)
            phentsize, phnum = struct.unpack_from(e + "HH", data, 0x36)
        else:
            phoff, = struct.unpack_from(e + "I", data, 0x1C)
            phentsize, phnum = struct.unpack_from(e + "HH", data, 0x2A)
        loads, dynamic = [], None
        for i in range(phnum):
            off = phoff + i * phentsize
            if self.is64:
                p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(e + "IIQQQQ", data, off)
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(e + "IIIII", data, off)
            if p_type == 1:      # PT_LOAD
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == 2:    # PT_DYNAMIC
                dynamic = (p_offset, p_filesz)
        return loads, dynamic

    def _dynamic_tags(self) -> dict[int, list[int]]:
        """Every dynamic entry's values by tag, in order (none for a statically linked file)."""
        tags: dict[int, list[int]] = {}
        if self.dynamic is None:
            return tags
        fmt, size = (self.e + "qQ", 16) if self.is64 else (self.e + "iI", 8)
        start, length = self.dynamic
        for off in range(start, start + length - size + 1, size):
            tag, val = struct.unpack_from(fmt, self.data, off)
            if tag == 0:         # DT_NULL
                break
            tags.setdefault(tag, []).append(val)
        return tags

    def offset(self, vaddr: int) -> int:
        """The file offset of a virtual address (DT_STRTAB and DT_VERNEED are addresses)."""
        for start, offset, filesz in self.loads:
            if start <= vaddr < start + filesz:
                return vaddr - start + offset
        raise ValueError(f"{self.name}: address {vaddr:#x} is outside every PT_LOAD segment")

    def string(self, index: int) -> str:
        start = self.strtab + index
        return self.data[start:self.data.index(b"\0", start)].decode("utf-8", "replace")

    @property
    def machine(self) -> str:
        return _MACHINES.get(self.machine_number, f"EM_{self.machine_number}")

    def dynamic_strings(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in _DT_NAMES.values()}
        if self.strtab is not None:
            for tag, name in _DT_NAMES.items():
                out[name] = [self.string(v) for v in self.tags.get(tag, [])]
        return out

    def version_needs(self) -> list[str]:
        """The symbol versions the file needs from its libraries (.gnu.version_r): GLIBC_2.34, GLIBCXX_3.4.30, ..."""
        if self.strtab is None or _DT_VERNEED not in self.tags:
            return []
        versions, off = [], self.offset(self.tags[_DT_VERNEED][0])
        for _ in range(self.tags.get(_DT_VERNEEDNUM, [0])[0]):
            _version, count, _file, aux, following = struct.unpack_from(self.e + "HHIII", self.data, off)
            aux_off = off + aux
            for _ in range(count):
                _hash, _flags, _other, name, aux_next = struct.unpack_from(self.e + "IHHII", self.data, aux_off)
                versions.append(self.string(name))
                aux_off += aux_next
            if not following:
                break
            off += following
        return versions


def elf_dynamic(path: str | Path) -> dict[str, list[str]]:
    """DT_NEEDED / DT_RPATH / DT_RUNPATH / DT_SONAME of an ELF file."""
    return _Elf(Path(path).read_bytes(), str(path)).dynamic_strings()


_LIBPYTHON = re.compile(r"^libpython(\d+)(?:-[0-9a-f]+)?\.(\d+)(t?)d?m?\.so")
# auditwheel's renamed copy of a libpython, shipped in lib/ (libpython3-419a3a08.13.so.1.0 in the wheel's 3.13 stub)
_VENDORED_LIBPYTHON = re.compile(r"^libpython\d+-[0-9a-f]+\.")


def _libpython_in(needed: list[str]) -> str | None:
    """The libpython among an ELF file's DT_NEEDED names, or None."""
    return next((lib for lib in needed if _LIBPYTHON.match(lib)), None)


def stub_python_version(path: str | Path) -> str | None:
    """The Python minor ("3.12") a triton_python_backend_stub embeds, from the libpython it links.

    auditwheel renames bundled libraries (libpython3-419a3a08.13.so.1.0 in the wheel's 3.13 stub),
    so the hash infix is allowed. None when the stub links no libpython.
    """
    lib = _libpython_in(elf_dynamic(path)["needed"])
    m = _LIBPYTHON.match(lib) if lib else None
    return f"{m.group(1)}.{m.group(2)}{m.group(3)}" if m else None


def is_vendored_libpython(name: str) -> bool:
    """A libpython renamed by auditwheel and shipped in the bundle's lib/, instead of the host's own."""
    return bool(_VENDORED_LIBPYTHON.match(name))


# --- platform: what a host must have to run the bundle -----------------------------------------

# Triton 2.51 (r24.10) builds the Python backend with pybind11 2.10, which predates numpy 2: with numpy >= 2 models
# load but every output comes back empty. r24.11 (Triton 2.52.0) moved to pybind11 2.12 (python_backend PR #384).
PYTHON_BACKEND_NUMPY2_SINCE = "2.52.0"


@dataclass(frozen=True)
class Platform:
    """What a host needs to run a bundle, read from the bundle's ELF files and Triton version when it is built.

    An empty value is unknown (a bundle built from files without it); the preflight checks only what is known.
    """

    machine: str = ""                    # bin/tritonserver's architecture as `uname -m` names it ("x86_64")
    glibc: str = ""                      # the highest GLIBC_2.x any file needs ("2.35") ...
    glibc_by: str = ""                   # ... and the first file that needs it
    glibcxx: str = ""                    # the highest GLIBCXX_3.4.x (libstdc++) any file needs ("3.4.30") ...
    glibcxx_by: str = ""
    stub_libpythons: tuple[tuple[str, str], ...] = ()  # (Python minor, the libpython its stub links)
    numpy2: bool | None = None           # its Python backend works with numpy >= 2

    def vendored_libpython(self, python_version: str) -> str:
        """The libpython shipped in the bundle's lib/ that the stub for this Python links ("" when it links the
        host's own)."""
        libpython = dict(self.stub_libpythons).get(python_version, "")
        return libpython if is_vendored_libpython(libpython) else ""

    def as_meta(self) -> dict:
        return {"machine": self.machine, "glibc": self.glibc, "glibc_by": self.glibc_by, "glibcxx": self.glibcxx,
                "glibcxx_by": self.glibcxx_by, "stub_libpythons": dict(self.stub_libpythons),
                "numpy2": self.numpy2}

    @classmethod
    def from_meta(cls, meta: dict) -> Platform:
        return cls(meta["machine"], meta["glibc"], meta["glibc_by"], meta["glibcxx"], meta["glibcxx_by"],
                   tuple(sorted(meta["stub_libpythons"].items(), key=lambda kv: _version_key(kv[0]))),
                   meta["numpy2"])


def _highest(needs: dict[str, list[str]], prefix: str) -> tuple[str, str]:
    """The highest `<prefix>X.Y[.Z]` version any file needs, and the first file (by name) that needs it."""
    best: tuple = ()
    for name in sorted(needs):
        for version in needs[name]:
            if version.startswith(prefix) and re.fullmatch(r"[\d.]+", version[len(prefix):]):
                key = tuple(int(p) for p in version[len(prefix):].split("."))
                if key > (best[0] if best else ()):
                    best = (key, version[len(prefix):], name)
    return (best[1], best[2]) if best else ("", "")


def platform_of(files: Iterable[tuple[str, Callable[[], bytes]]], triton_version: str) -> Platform:
    """The platform a bundle needs, from its files: (name in the bundle, a reader of its bytes); ELF files only."""
    needs, machine, stubs = {}, "", {}
    for name, read in files:
        data = read()
        if data[:4] != b"\x7fELF":
            continue
        elf = _Elf(data, name)
        needs[name] = elf.version_needs()
        if name == "bin/tritonserver":
            machine = elf.machine
        parts = name.split("/")
        if parts[0] == "python_backend_stubs" and parts[-1] == STUB_NAME:
            stubs[parts[1]] = _libpython_in(elf.dynamic_strings()["needed"]) or ""
    glibc, glibc_by = _highest(needs, "GLIBC_")
    glibcxx, glibcxx_by = _highest(needs, "GLIBCXX_")
    numpy2 = _version_key(triton_version) >= _version_key(PYTHON_BACKEND_NUMPY2_SINCE)
    return Platform(machine, glibc, glibc_by, glibcxx, glibcxx_by,
                    tuple(sorted(stubs.items(), key=lambda kv: _version_key(kv[0]))), numpy2)


# --- sources -------------------------------------------------------------------------------------

@dataclass
class _Entry:
    """One member of the bundle: a directory, a file (read through `opener`) or a symlink."""
    name: str
    mode: int
    size: int = 0
    opener: Callable[[], IO[bytes]] | None = None
    linkname: str | None = None
    is_dir: bool = False


def _cache_dir() -> Path:
    # Read at call time so tests (and the invoke task) can point it elsewhere.
    return Path(CACHE_DIR)


def _pinned_source_id() -> str:
    return f"format={BUNDLE_FORMAT};wheel:nvidia-pytriton=={PYTRITON_VERSION};sha256={PYTRITON_SHA256}"


def _fetch_pinned_wheel(progress: Progress) -> Path:
    """The pinned wheel in CACHE_DIR/wheels, downloaded by pip with --require-hashes if missing."""
    wheels = _cache_dir() / "wheels"
    wheel = wheels / PYTRITON_WHEEL
    if wheel.is_file():
        if _sha256_file(wheel) == PYTRITON_SHA256:
            return wheel
        progress(f"cached {wheel.name} has the wrong sha256; downloading it again")
        wheel.unlink()
    wheels.mkdir(parents=True, exist_ok=True)
    progress(f"downloading nvidia-pytriton {PYTRITON_VERSION} (55 MB) with pip")
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=wheels) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"nvidia-pytriton=={PYTRITON_VERSION} --hash=sha256:{PYTRITON_SHA256}\n")
        # --platform/--only-binary pick the x86-64 wheel whatever the control machine is.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
               "--only-binary=:all:", "--platform", PYTRITON_PLATFORM,
               "--disable-pip-version-check", "-r", str(req), "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / PYTRITON_WHEEL
        if proc.returncode != 0 or not got.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise TritonfleetError(
                f"pip could not download nvidia-pytriton {PYTRITON_VERSION}:\n{tail}",
                hint=f"check the network/pip index, or put {PYTRITON_WHEEL} "
                     f"(sha256 {PYTRITON_SHA256}) into {wheels}")
        if _sha256_file(got) != PYTRITON_SHA256:  # pip checked it; this guards a changed pip
            raise TritonfleetError(f"downloaded {PYTRITON_WHEEL} does not match the pinned sha256",
                                   hint="the index served a different file; do not use it")
        os.replace(got, wheel)
    return wheel


def _build_from_wheel(wheel: Path, source_id: str, bundles_dir: Path, progress: Progress) -> Bundle:
    entries = _entries_from_wheel(wheel)
    return _pack(entries, PYTRITON_TRITON_VERSION,
                 f"pypi:nvidia-pytriton=={PYTRITON_VERSION} sha256:{PYTRITON_SHA256}",
                 source_id, bundles_dir, progress)


def _entries_from_wheel(wheel: Path) -> list[_Entry]:
    """Map the wheel's members onto the bundle layout; check each stub's Python against its folder."""
    zf = zipfile.ZipFile(wheel)
    prefix = "pytriton/tritonserver/"
    entries: list[_Entry] = []
    stub_dirs: dict[str, str] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        name = info.filename
        if name.startswith("nvidia_pytriton.libs/"):
            rel = "lib/" + name.rsplit("/", 1)[1]
        elif name.startswith(prefix):
            rel = name[len(prefix):]
            parts = rel.split("/")
            if parts[0] not in ("bin", "lib", "backends", "python_backend_stubs", "caches"):
                continue
            if parts[0] == "python_backend_stubs":
                if len(parts) != 3 or parts[2] != STUB_NAME:
                    continue
                stub_dirs[rel] = parts[1]
            if rel == f"backends/python/{STUB_NAME}":
                continue
        else:
            continue
        mode = (info.external_attr >> 16) & 0o777
        entries.append(_Entry(rel, _norm_mode(mode), info.file_size,
                              opener=lambda n=name: zf.open(n)))
    version = f"{PYTRITON_TRITON_VERSION}\n".encode()
    entries.append(_Entry("TRITON_VERSION", 0o644, len(version),
                          opener=lambda: io.BytesIO(version)))
    # Cross-check every stub's folder name with the libpython it actually links.
    with tempfile.TemporaryDirectory() as tmp:
        for rel, folder in stub_dirs.items():
            member = prefix + rel
            target = Path(tmp) / "stub"
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            found = stub_python_version(target)
            if found != folder:
                raise TritonfleetError(
                    f"{member} links Python {found or 'no libpython'} but sits in folder {folder}",
                    file=str(wheel), hint="this wheel is not laid out as expected; use another source")
    return entries


def _find_tree_root(top: Path, shown: Path | None = None) -> Path:
    """The folder holding bin/tritonserver: `top` itself, or a few levels down (tritonserver/,
    opt/tritonserver/) as `docker cp` exports and tarballs usually nest it."""
    for depth in range(4):
        pattern = "/".join(["*"] * depth + ["bin", "tritonserver"]) if depth else "bin/tritonserver"
        hits = sorted(p for p in top.glob(pattern) if p.is_file())
        if len(hits) == 1:
            return hits[0].parent.parent
        if len(hits) > 1:
            raise TritonfleetError(
                f"found {len(hits)} tritonserver trees: "
                + ", ".join(str(h.parent.parent.relative_to(top)) for h in hits),
                file=str(shown or top), hint="pass the one /opt/tritonserver tree to bundle")
    raise TritonfleetError("no bin/tritonserver found: this is not an /opt/tritonserver tree",
                           file=str(shown or top),
                           hint="export it from the NGC container: `docker create "
                                "nvcr.io/nvidia/tritonserver:24.10-py3` then `docker cp "
                                "<id>:/opt/tritonserver .`")


def _entries_from_tree(root: Path, progress: Progress, shown: Path | None = None) -> tuple[list[_Entry], str]:
    """Map an /opt/tritonserver tree onto the bundle layout.

    Only the Python backend is kept (other NGC backends weigh GBs and tritonfleet serves Python
    models); the stub in backends/python moves to python_backend_stubs/<its Python>/.
    """
    where = str(shown or root)
    version_file = root / "TRITON_VERSION"
    if not version_file.is_file():
        raise TritonfleetError("the tree has no TRITON_VERSION file, so its Triton version is unknown",
                               file=where, hint="write the version (e.g. 2.51.0) into TRITON_VERSION "
                                                "at the top of the tree")
    version = version_file.read_text().strip()
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise TritonfleetError(f"TRITON_VERSION holds {version!r}, not a version like 2.51.0",
                               file=str(version_file))

    entries: list[_Entry] = []
    seen: dict[str, str] = {}

    def add(path: Path, rel: str) -> None:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            inside = (path.parent / target).resolve()
            if not os.path.isabs(target) and inside.is_relative_to(root.resolve()) and inside.exists():
                entries.append(_Entry(rel, 0o777, linkname=target))
                return
            st = path.stat()  # points outside the tree: ship the file it points to
        if not stat.S_ISREG(st.st_mode):
            return
        entries.append(_Entry(rel, _norm_mode(st.st_mode), st.st_size,
                              opener=lambda p=path: open(p, "rb")))

    def add_stub(path: Path) -> None:
        found = stub_python_version(path)
        if found is None:
            raise TritonfleetError(f"cannot tell which Python {path.name} was built for: it links "
                                   "no libpython", file=str(path),
                                   hint="use a stub built with a shared libpython")
        if found in seen:
            raise TritonfleetError(f"two stubs for Python {found}: {seen[found]} and {path}",
                                   file=where, hint="keep one of them")
        seen[found] = str(path)
        add(path, f"python_backend_stubs/{found}/{STUB_NAME}")

    add(root / "bin" / "tritonserver", "bin/tritonserver")
    add(version_file, "TRITON_VERSION")
    libdir = root / "lib"
    libs = sorted(p for p in libdir.iterdir() if ".so" in p.name) if libdir.is_dir() else []
    if not libs:
        raise TritonfleetError("the tree has no lib/*.so* (libtritonserver.so)", file=where)
    for p in libs:
        add(p, f"lib/{p.name}")

    pydir = root / "backends" / "python"
    for need in ("libtriton_python.so", "triton_python_backend_utils.py"):
        if not (pydir / need).is_file():
            raise TritonfleetError(f"the tree lacks backends/python/{need} (the Python backend)",
                                   file=where, hint="export the full /opt/tritonserver tree")
    for p in sorted(pydir.rglob("*")):
        if p.is_dir():
            continue
        rel = p.relative_to(pydir).as_posix()
        if rel == STUB_NAME:
            add_stub(p)
        else:
            add(p, f"backends/python/{rel}")
    stubs_dir = root / "python_backend_stubs"
    if stubs_dir.is_dir():
        for p in sorted(stubs_dir.glob(f"*/{STUB_NAME}")):
            add_stub(p)
    if not seen:
        raise TritonfleetError("the tree has no triton_python_backend_stub", file=where,
                               hint="export the full /opt/tritonserver tree")
    others = sorted(p.name for p in (root / "backends").iterdir() if p.name != "python")
    if others:
        progress(f"leaving out backends {', '.join(others)}: tritonfleet ships the Python backend")
    caches = root / "caches"
    if caches.is_dir():
        for p in sorted(caches.rglob("*")):
            if not p.is_dir():
                add(p, f"caches/{p.relative_to(caches).as_posix()}")
    return entries, version


def _tree_fingerprint(root: Path) -> str:
    """A cheap identity of a source tree (paths, sizes, mtimes, modes) to reuse a cached build."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n"
                     .encode())
    return h.hexdigest()


def _safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract a user tarball without letting it write outside `dest`."""
    with tarfile.open(tar_path) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
            return
        for m in tf.getmembers():  # Pythons without extraction filters
            p = PurePosixPath(m.name)
            if p.is_absolute() or ".." in p.parts or m.isdev() or (
                    m.issym() and (os.path.isabs(m.linkname) or ".." in PurePosixPath(m.linkname).parts)) \
                    or m.islnk():
                raise TritonfleetError(f"unsafe member {m.name} in tarball", file=str(tar_path))
        tf.extractall(dest)


# --- packing -------------------------------------------------------------------------------------

class _HashingWriter(io.RawIOBase):
    """Write-through file wrapper that hashes and counts what passes."""

    def __init__(self, f: IO[bytes]):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)


def _backend_names(names) -> tuple[str, ...]:
    """The backends a tree carries: the folders under backends/ (each `backends/<name>/libtriton_<name>.so`)."""
    return tuple(sorted({n.split("/")[1] for n in names if n.startswith("backends/") and n.count("/") >= 2}))


def _completed(meta: dict, tar_path: Path, json_path: Path) -> dict:
    """The sidecar's metadata, with what a bundle cached before the sidecar recorded it (its backends, its
    platform) read once from the tarball and written back, so the next run does not read the tarball again."""
    if "backends" in meta and "platform" in meta:
        return meta
    names: list[str] = []

    def files(tf: tarfile.TarFile):
        for member in tf:
            if member.isfile():
                names.append(member.name)
                yield member.name, lambda m=member: tf.extractfile(m).read()
    try:
        with tarfile.open(tar_path, "r:gz") as tf:
            platform = platform_of(files(tf), meta["triton_version"])
    except (OSError, tarfile.TarError, ValueError, struct.error):
        # the size check after this reports a missing or broken tarball
        return {"backends": [], "platform": Platform().as_meta(), **meta}
    completed = {"backends": list(_backend_names(names)), "platform": platform.as_meta(), **meta}  # keeps what it had
    try:
        _write_atomic(json_path, (json.dumps(completed, indent=2, sort_keys=True) + "\n").encode())
    except OSError:
        pass  # a read-only cache still works, at the cost of reading the tarball per run
    return completed


def _entry_bytes(entry: _Entry) -> bytes:
    with entry.opener() as f:
        return f.read()


def _pack(entries: list[_Entry], version: str, source: str, source_id: str, bundles_dir: Path,
          progress: Progress) -> Bundle:
    """Write the deterministic tarball and its sidecar json atomically into the cache."""
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TritonfleetError(f"the source maps several files to {', '.join(dupes)}")
    pythons = tuple(sorted({n.split("/")[1] for n in names if n.startswith("python_backend_stubs/")},
                           key=_version_key))
    manifest = {
        "format": BUNDLE_FORMAT,
        "triton_version": version,
        "python_versions": list(pythons),
        "source": source,
        "files": len(entries),
    }
    blob = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    entries = entries + [_Entry(MANIFEST_NAME, 0o644, len(blob), opener=lambda: io.BytesIO(blob))]
    dirs = {str(PurePosixPath(n).parents[i]) for n in (e.name for e in entries)
            for i in range(len(PurePosixPath(n).parents) - 1)}
    entries += [_Entry(d, 0o755, is_dir=True) for d in dirs]
    entries.sort(key=lambda e: e.name)

    bundles_dir.mkdir(parents=True, exist_ok=True)
    progress(f"packing Triton {version} ({len(entries)} entries, Python "
             f"{', '.join(pythons)}) from {source}")
    fd, tmp_name = tempfile.mkstemp(prefix=".triton-", suffix=".tar.gz.tmp", dir=bundles_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            hw = _HashingWriter(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=hw, compresslevel=GZIP_LEVEL,
                               mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
                    for e in entries:
                        _add_entry(tf, e)
            raw.flush()
            os.fsync(raw.fileno())
        sha, size = hw.h.hexdigest(), hw.n
        bundle_id = f"triton-{version}-{sha[:12]}"
        final = bundles_dir / f"{bundle_id}.tar.gz"
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # in the sidecar only: the tarball (and so the bundle id) stays as it was
    backends = _backend_names(names)
    platform = platform_of(((e.name, lambda e=e: _entry_bytes(e)) for e in entries if e.opener), version)
    meta = dict(manifest, sha256=sha, size=size, bundle_id=bundle_id, source_id=source_id, backends=list(backends),
                platform=platform.as_meta())
    _write_atomic(bundles_dir / f"{bundle_id}.json",
                  (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    progress(f"bundle {bundle_id} ({_mb(size)}) in {final}")
    return Bundle(final, sha, size, bundle_id, version, pythons, backends, platform)


def _add_entry(tf: tarfile.TarFile, e: _Entry) -> None:
    ti = tarfile.TarInfo(e.name)
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = TAR_MTIME, 0, 0, "root", "root"
    ti.mode = e.mode
    if e.is_dir:
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
    elif e.linkname is not None:
        ti.type, ti.linkname = tarfile.SYMTYPE, e.linkname
        tf.addfile(ti)
    else:
        ti.size = e.size
        with e.opener() as f:
            tf.addfile(ti, f)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reuse(bundles_dir: Path, source_id: str, progress: Progress) -> Bundle | None:
    """The bundle already built from this source, if any (and say so)."""
    cached = _find_cached(bundles_dir, source_id)
    if cached:
        progress(f"bundle {cached.bundle_id} is cached ({_mb(cached.size)})")
    return cached


def _find_cached(bundles_dir: Path, source_id: str) -> Bundle | None:
    """A complete earlier build of the same source (json written last marks completion)."""
    if not bundles_dir.is_dir():
        return None
    for meta_path in sorted(bundles_dir.glob("triton-*.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("source_id") != source_id:
            continue
        try:
            return load_bundle(meta_path)
        except TritonfleetError:
            continue  # incomplete or damaged: rebuild
    return None


# --- small helpers -------------------------------------------------------------------------------

def _norm_mode(mode: int) -> int:
    """0755 for anything executable, else 0644: keeps the x bits, drops the wheel's world-write."""
    return 0o755 if mode & 0o111 else 0o644


def _minor(version: str) -> str:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(t?)(?:\.\d+.*)?\s*", str(version))
    if not m:
        raise TritonfleetError(f"{version!r} is not a Python version like 3.11")
    return f"{m.group(1)}.{m.group(2)}{m.group(3)}"


def _version_key(v: str) -> tuple:
    m = re.match(r"(\d+)\.(\d+)(.*)", v)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else (9999, 9999, v)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


__all__: Iterable[str] = ["Bundle", "Platform", "platform_of", "build_bundle", "load_bundle", "default_bundle",
                          "elf_dynamic", "stub_python_version", "PYTRITON_VERSION", "PYTRITON_SHA256"]
