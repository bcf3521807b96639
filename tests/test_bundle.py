"""Tests of the Triton bundle, including a real tritonserver started from an extracted bundle.

The tests that build the bundle from the pinned nvidia-pytriton wheel (55 MB) or start tritonserver are
marked `server`: they take tens of seconds, and they take the wheel from the cache `invoke bundle` fills.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tritonfleet.triton import bundle as bmod
from tritonfleet.triton.bundle import (PYTRITON_SHA256, PYTRITON_WHEEL, Bundle, build_bundle,
                                default_bundle, elf_dynamic, load_bundle, stub_python_version)
from tritonfleet.errors import TritonfleetError
from tritonfleet.paths import CACHE_DIR

LOCAL_WHEEL = Path("/tmp/wheel") / PYTRITON_WHEEL
ALL_PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
STUB = "triton_python_backend_stub"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _seed_wheel(cache: Path) -> None:
    """Put the pinned wheel into a test cache without the network when a copy is at hand: the one
    `invoke bundle` keeps, or one in /tmp/wheel."""
    for wheel in (CACHE_DIR / "wheels" / PYTRITON_WHEEL, LOCAL_WHEEL):
        if wheel.is_file() and _sha256(wheel) == PYTRITON_SHA256:
            (cache / "wheels").mkdir(parents=True, exist_ok=True)
            shutil.copy(wheel, cache / "wheels" / PYTRITON_WHEEL)
            return


@pytest.fixture(scope="module")  # a session-wide patch would hide the real cache from every later test
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    _seed_wheel(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bmod, "CACHE_DIR", path)
        yield path


@pytest.fixture(scope="module")
def wheel_bundle(cache) -> Bundle:
    messages: list[str] = []
    t = time.monotonic()
    b = default_bundle(progress=messages.append)
    print(f"\ncold build {time.monotonic() - t:.1f}s, {b.size / 1e6:.1f} MB: {messages[-1]}")
    return b


@pytest.fixture(scope="module")
def extracted(wheel_bundle, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    with tarfile.open(wheel_bundle.path) as tf:
        tf.extractall(root, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(root)
    return root


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return tf.getmembers()


def _manifest(path: Path) -> dict:
    with tarfile.open(path) as tf:
        return json.load(tf.extractfile("tritonfleet-bundle.json"))


@pytest.fixture
def fake_tree(extracted, tmp_path) -> Path:
    """A small NGC-style export: opt/tritonserver with ONE stub (3.11) in backends/python."""
    root = tmp_path / "export" / "opt" / "tritonserver"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").write_text("#!/bin/sh\necho fake\n")
    (root / "bin" / "tritonserver").chmod(0o755)
    (root / "lib").mkdir()
    for lib in sorted((extracted / "lib").iterdir()):
        if lib.stat().st_size < 100_000:
            shutil.copy(lib, root / "lib" / lib.name)
    os.symlink(sorted(p.name for p in (root / "lib").iterdir())[0], root / "lib" / "libalias.so")
    py = root / "backends" / "python"
    py.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(extracted / "backends" / "python" / name, py / name)
    shutil.copy(extracted / "python_backend_stubs" / "3.11" / STUB, py / STUB)
    (py / STUB).chmod(0o755)
    (root / "backends" / "onnxruntime").mkdir()
    (root / "backends" / "onnxruntime" / "libtriton_onnxruntime.so").write_bytes(b"big")
    (root / "caches" / "local").mkdir(parents=True)
    shutil.copy(extracted / "caches" / "local" / "libtritoncache_local.so", root / "caches" / "local")
    (root / "TRITON_VERSION").write_text("2.51.0\n")
    return root


# --- the pinned wheel ------------------------------------------------------------------------------

@pytest.mark.server
def test_manifest_and_sidecar(wheel_bundle):
    m = _manifest(wheel_bundle.path)
    assert m["triton_version"] == "2.51.0" == wheel_bundle.triton_version
    assert m["python_versions"] == list(ALL_PYTHONS)
    assert "nvidia-pytriton==0.7.0" in m["source"] and PYTRITON_SHA256 in m["source"]
    files = [t for t in _members(wheel_bundle.path) if not t.isdir()]
    assert m["files"] == len(files) - 1  # every file but the manifest itself

    side = json.loads(wheel_bundle.path.with_name(wheel_bundle.bundle_id + ".json").read_text())
    assert side["sha256"] == _sha256(wheel_bundle.path) == wheel_bundle.sha256
    assert side["size"] == wheel_bundle.path.stat().st_size == wheel_bundle.size
    assert wheel_bundle.bundle_id == f"triton-2.51.0-{wheel_bundle.sha256[:12]}"
    assert wheel_bundle.path.name == wheel_bundle.bundle_id + ".tar.gz"
    assert wheel_bundle.path.parent == bmod.CACHE_DIR / "bundles"


@pytest.mark.server
def test_python_versions_detected_from_elf(wheel_bundle, extracted):
    assert wheel_bundle.python_versions == ALL_PYTHONS
    for v in ALL_PYTHONS:
        assert stub_python_version(extracted / "python_backend_stubs" / v / STUB) == v
    # The 3.13 stub links the auditwheel-renamed libpython3-<hash>.13.so.1.0 shipped in lib/.
    needed = elf_dynamic(extracted / "python_backend_stubs" / "3.13" / STUB)["needed"]
    assert any(n.startswith("libpython3-") and (extracted / "lib" / n).is_file() for n in needed)
    assert stub_python_version(extracted / "bin" / "tritonserver") is None


@pytest.mark.server
@pytest.mark.skipif(not shutil.which("readelf"), reason="readelf (binutils) is not installed")
def test_elf_reader_agrees_with_readelf(extracted):
    for rel in ("bin/tritonserver", "python_backend_stubs/3.12/" + STUB,
                "backends/python/libtriton_python.so"):
        out = subprocess.run(["readelf", "-d", str(extracted / rel)], capture_output=True,
                             text=True, check=True).stdout
        needed = [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
        assert elf_dynamic(extracted / rel)["needed"] == needed


@pytest.mark.server
def test_layout_modes_and_determinism_of_entries(wheel_bundle, extracted):
    members = _members(wheel_bundle.path)
    names = [t.name for t in members]
    assert names == sorted(names)
    assert all(t.uid == 0 and t.gid == 0 and t.uname == "root" and t.gname == "root"
               and t.mtime == bmod.TAR_MTIME for t in members)
    for rel in ("bin/tritonserver", "backends/python/libtriton_python.so",
                "backends/python/triton_python_backend_utils.py",
                "caches/local/libtritoncache_local.so", "TRITON_VERSION", "tritonfleet-bundle.json"):
        assert (extracted / rel).is_file(), rel
    assert any(p.name.startswith("libtritonserver") for p in (extracted / "lib").iterdir())
    assert not (extracted / "backends" / "python" / STUB).exists()
    assert not any("nvidia_pytriton" in n or n.startswith("pytriton") for n in names)
    mode = {t.name: t.mode for t in members}
    assert mode["bin/tritonserver"] == 0o755
    assert all(mode[f"python_backend_stubs/{v}/{STUB}"] == 0o755 for v in ALL_PYTHONS)
    assert mode["backends/python/libtriton_python.so"] == 0o644  # the wheel's 0666 loses world-write
    assert all(not m & 0o022 for m in mode.values())


@pytest.mark.server
def test_rebuild_is_byte_identical_and_cache_is_reused(wheel_bundle, cache, tmp_path, monkeypatch):
    # Cached: same source, no re-packing.
    messages: list[str] = []
    before = wheel_bundle.path.stat().st_mtime_ns
    t = time.monotonic()
    again = build_bundle(None, progress=messages.append)
    print(f"\ncached build {time.monotonic() - t:.3f}s")
    assert again == wheel_bundle
    assert wheel_bundle.path.stat().st_mtime_ns == before
    assert any("cached" in m for m in messages)
    # Cold again, in another cache, from the same wheel: the very same bytes.
    other = tmp_path / "cache2"
    (other / "wheels").mkdir(parents=True)
    os.link(cache / "wheels" / PYTRITON_WHEEL, other / "wheels" / PYTRITON_WHEEL)
    monkeypatch.setattr(bmod, "CACHE_DIR", other)
    rebuilt = build_bundle(cache / "wheels" / PYTRITON_WHEEL, progress=lambda m: None)
    assert rebuilt.sha256 == wheel_bundle.sha256
    assert rebuilt.bundle_id == wheel_bundle.bundle_id
    assert rebuilt.path != wheel_bundle.path


@pytest.mark.server
def test_load_bundle_checks_size_and_sha(wheel_bundle, tmp_path):
    assert load_bundle(wheel_bundle.path) == wheel_bundle
    assert load_bundle(wheel_bundle.path.with_suffix("").with_suffix(".json")) == wheel_bundle
    assert load_bundle(wheel_bundle.path, verify=True) == wheel_bundle

    copy = tmp_path / wheel_bundle.path.name
    shutil.copy(wheel_bundle.path, copy)
    shutil.copy(wheel_bundle.path.with_name(wheel_bundle.bundle_id + ".json"),
                tmp_path / (wheel_bundle.bundle_id + ".json"))
    with open(copy, "r+b") as f:  # same size, one byte changed
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert load_bundle(copy).sha256 == wheel_bundle.sha256  # the fast path checks only the size
    with pytest.raises(TritonfleetError, match="corrupted"):
        load_bundle(copy, verify=True)
    with open(copy, "ab") as f:
        f.write(b"x")
    with pytest.raises(TritonfleetError, match="bytes"):
        load_bundle(copy)
    (tmp_path / (wheel_bundle.bundle_id + ".json")).unlink()
    with pytest.raises(TritonfleetError, match="missing"):
        load_bundle(copy)


@pytest.mark.server
def test_missing_stub_names_both_versions(wheel_bundle):
    assert wheel_bundle.stub_path("3.11") == f"python_backend_stubs/3.11/{STUB}"
    assert wheel_bundle.stub_path("3.12.3") == f"python_backend_stubs/3.12/{STUB}"
    with pytest.raises(TritonfleetError) as err:
        wheel_bundle.stub_path("3.7")
    text = str(err.value)
    assert "3.7" in text and "3.8, 3.9, 3.10, 3.11, 3.12, 3.13" in text
    assert err.value.hint


@pytest.mark.server
def test_pinned_wheel_is_fetched_with_require_hashes(cache, tmp_path, monkeypatch):
    """pip is asked for exactly the pinned hash; a cached wheel with a wrong hash is replaced."""
    empty = tmp_path / "c"
    (empty / "wheels").mkdir(parents=True)
    (empty / "wheels" / PYTRITON_WHEEL).write_bytes(b"not the wheel")
    monkeypatch.setattr(bmod, "CACHE_DIR", empty)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        req = Path(cmd[cmd.index("-r") + 1]).read_text()
        assert f"nvidia-pytriton==0.7.0 --hash=sha256:{PYTRITON_SHA256}" in req
        shutil.copy(cache / "wheels" / PYTRITON_WHEEL, Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bmod.subprocess, "run", fake_run)
    wheel = bmod._fetch_pinned_wheel(lambda m: None)
    assert _sha256(wheel) == PYTRITON_SHA256
    assert len(calls) == 1 and "--require-hashes" in calls[0] and "--no-deps" in calls[0]
    bmod._fetch_pinned_wheel(lambda m: None)
    assert len(calls) == 1  # reused


def test_a_foreign_wheel_is_refused(cache, tmp_path):
    fake = tmp_path / PYTRITON_WHEEL
    fake.write_bytes(b"zip?")
    with pytest.raises(TritonfleetError, match="not the pinned"):
        build_bundle(fake, progress=lambda m: None)


# --- /opt/tritonserver trees ---------------------------------------------------------------------

def _check_normalised(b: Bundle, fake_tree: Path) -> None:
    assert b.triton_version == "2.51.0"
    assert b.python_versions == ("3.11",)
    names = {t.name: t for t in _members(b.path)}
    assert f"python_backend_stubs/3.11/{STUB}" in names
    assert names[f"python_backend_stubs/3.11/{STUB}"].mode == 0o755
    assert f"backends/python/{STUB}" not in names
    assert not any("onnxruntime" in n for n in names)
    assert {"bin/tritonserver", "backends/python/libtriton_python.so", "TRITON_VERSION",
            "backends/python/triton_python_backend_utils.py",
            "caches/local/libtritoncache_local.so"} <= set(names)
    libs = sorted(n[4:] for n in names if n.startswith("lib/"))
    assert libs == sorted(p.name for p in (fake_tree / "lib").iterdir())
    assert names["lib/libalias.so"].issym()
    assert _manifest(b.path)["python_versions"] == ["3.11"]
    with pytest.raises(TritonfleetError) as err:
        b.stub_path("3.12")
    assert "3.12" in str(err.value) and "3.11" in str(err.value)


@pytest.mark.server
def test_source_directory_is_normalised_and_cached(cache, fake_tree):
    messages: list[str] = []
    b = build_bundle(fake_tree.parent.parent, progress=messages.append)  # export/ holds opt/tritonserver
    _check_normalised(b, fake_tree)
    assert any("onnxruntime" in m for m in messages)
    assert _manifest(b.path)["source"] == f"directory:{fake_tree.parent.parent}"
    assert build_bundle(fake_tree.parent.parent, progress=messages.append) == b
    assert "cached" in messages[-1]
    # A changed tree is re-packed.
    (fake_tree / "caches" / "local" / "README").write_text("changed\n")
    assert build_bundle(fake_tree.parent.parent, progress=lambda m: None).sha256 != b.sha256


@pytest.mark.server
def test_source_tarball_is_normalised(cache, fake_tree, tmp_path):
    tgz = tmp_path / "tritonserver-export.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(fake_tree, arcname="tritonserver")
    b = build_bundle(tgz, progress=lambda m: None)
    _check_normalised(b, fake_tree)
    assert _manifest(b.path)["source"].startswith("tarball:tritonserver-export.tar.gz sha256:")
    again = build_bundle(tgz, progress=lambda m: None)
    assert again == b


@pytest.mark.server
def test_tree_errors_are_actionable(cache, tmp_path, fake_tree):
    with pytest.raises(TritonfleetError, match="no bin/tritonserver") as err:
        build_bundle(tmp_path / "export" / "opt" / "tritonserver" / "lib", progress=lambda m: None)
    assert err.value.hint
    (fake_tree / "TRITON_VERSION").unlink()
    with pytest.raises(TritonfleetError, match="TRITON_VERSION"):
        build_bundle(fake_tree, progress=lambda m: None)
    with pytest.raises(TritonfleetError, match="does not exist"):
        build_bundle(tmp_path / "nope", progress=lambda m: None)


# --- a real tritonserver from the bundle --------------------------------------------------------

MODEL_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            out = pb_utils.Tensor("SUM", (a + b).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''

CONFIG = '''
name: "add"
backend: "python"
max_batch_size: 0
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "B" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
'''


def _stub_python_here(versions: tuple[str, ...]) -> str | None:
    """A Python the stub can embed on this machine: the SYSTEM shared libpython3.X (found by the
    dynamic loader, not pyenv's) plus numpy for that system python. The stub's interpreter takes
    its prefix from the libpython it loads (/usr), so it sees /usr/lib/python3/dist-packages."""
    try:
        ldconfig = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        ldconfig = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    for v in versions:
        exe = Path(f"/usr/bin/python{v}")
        if f"libpython{v}.so.1.0 " in ldconfig and exe.is_file():
            ok = subprocess.run([str(exe), "-c", "import numpy"], capture_output=True,
                                env={"PATH": "/usr/bin:/bin"}).returncode == 0
            if ok:
                return v
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.server
def test_real_tritonserver_serves_a_python_model(wheel_bundle, tmp_path):
    version = _stub_python_here(wheel_bundle.python_versions)
    if version is None:
        pytest.skip("no system python3.X here with a shared libpython3.X.so.1.0 and numpy that the "
                    f"bundle has a stub for ({', '.join(wheel_bundle.python_versions)}); on Debian "
                    "12: apt-get install -y libpython3.11 python3-numpy")
    tritonclient_http = pytest.importorskip("tritonclient.http")
    np = pytest.importorskip("numpy")

    root = tmp_path / "opt-tritonserver"
    root.mkdir()
    with tarfile.open(wheel_bundle.path) as tf:
        tf.extractall(root, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(root)
    stub = root / "backends" / "python" / STUB
    shutil.copy2(root / wheel_bundle.stub_path(version), stub)
    assert os.access(stub, os.X_OK)

    repo = tmp_path / "models"
    (repo / "add" / "1").mkdir(parents=True)
    (repo / "add" / "config.pbtxt").write_text(CONFIG)
    (repo / "add" / "1" / "model.py").write_text(MODEL_PY)

    http, grpc, metrics = _free_ports(3)
    log = tmp_path / "tritonserver.log"
    # A clean environment: pyenv's variables must not leak into the stub's embedded interpreter.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LD_LIBRARY_PATH": str(root / "lib")}
    cmd = [str(root / "bin" / "tritonserver"), f"--model-repository={repo}",
           f"--backend-directory={root / 'backends'}",  # no trailing slash (see the notes)
           f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
           "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready in 120 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)

        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{http}")
        a = np.array([1, 2, 3, 4], dtype=np.float32)
        b = np.array([10, 20, 30, 0.5], dtype=np.float32)
        inputs = [tritonclient_http.InferInput("A", [4], "FP32"),
                  tritonclient_http.InferInput("B", [4], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("add", inputs,
                              outputs=[tritonclient_http.InferRequestedOutput("SUM")])
        assert result.as_numpy("SUM").tolist() == [11.0, 22.0, 33.0, 4.5]
        assert client.get_server_metadata()["version"] == wheel_bundle.triton_version
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        # The stub is a child process in the same session; make sure none outlives the test.
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass


def test_a_sidecar_without_backends_is_completed_from_the_tarball_once(tmp_path):
    """Bundles cached before the sidecar named their backends: listed once from the tarball, then recorded."""
    tar_path = tmp_path / "triton-2.51.0-000000000000.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        for name in ("backends/python/libtriton_python.so", "backends/onnxruntime/libtriton_onnxruntime.so",
                     "bin/tritonserver"):
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    sidecar = tmp_path / "triton-2.51.0-000000000000.json"
    sidecar.write_text(json.dumps({"sha256": "0" * 64, "size": tar_path.stat().st_size,
                                   "bundle_id": "triton-2.51.0-000000000000", "triton_version": "2.51.0",
                                   "python_versions": ["3.11"]}))
    assert bmod.load_bundle(tar_path).backends == ("onnxruntime", "python")
    assert json.loads(sidecar.read_text())["backends"] == ["onnxruntime", "python"]
    tar_path.write_bytes(b"\0" * tar_path.stat().st_size)  # unreadable as a tarball: the sidecar answers now
    assert bmod.load_bundle(sidecar).backends == ("onnxruntime", "python")
