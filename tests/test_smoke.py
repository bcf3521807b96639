"""Smoke test: unit tests of input building, and runs against a real tritonserver on 127.0.0.1.

The real-server tests lay out the Triton tree shipped in the `nvidia-pytriton` wheel the way
/opt/tritonserver looks on a host, and start it on free loopback ports; they are marked `server`. They are
skipped (with the reason) when no wheel, no shared libpython or no numpy for the stub's Python is on this machine.
The example models and every other shape of Python-backend model are smoke-tested on one such server in
tests/test_smoke_shapes.py, which uses the fixtures below.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from tritonfleet.paths import CACHE_DIR, REPO_ROOT
from tritonfleet.triton.endpoint import Endpoint
from tritonfleet.triton.server import ServerClient
from tritonfleet.triton.smoke import (DYNAMIC_DIM, ModelSmoke, SkipInference, SmokeReport, build_inputs,
                                     grpc_answers_as_http, smoke_test)

EXAMPLES = REPO_ROOT / "examples" / "models"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ALL_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16"]


# --------------------------------------------------------------------------------------------
# build_inputs (pure)


def _meta(inputs, batching: bool):
    return {"name": "m", "inputs": [{"name": n, "datatype": dt, "shape": ([-1] if batching else []) + dims}
                                    for n, dt, dims in inputs], "outputs": []}


def _config(inputs, max_batch_size: int, optional=()):
    return {"name": "m", "max_batch_size": max_batch_size,
            "input": [{"name": n, "data_type": "TYPE_" + ("STRING" if dt == "BYTES" else dt), "dims": dims,
                       "optional": n in optional} for n, dt, dims in inputs]}


def _described(tensor):
    return tensor.name(), list(tensor.shape()), tensor.datatype()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_build_inputs_every_datatype(protocol, datatype):
    inputs = [("X", datatype, [3])]
    built = build_inputs(_meta(inputs, False), _config(inputs, 0), protocol)
    assert [_described(t) for t in built] == [("X", [3], datatype)]
    tensor = built[0]
    if protocol == "http":
        raw = tensor._get_binary_data()
        assert raw is not None and len(raw) > 0
        if datatype not in ("BYTES", "BOOL"):
            assert len(raw) == 3 * {"8": 1, "16": 2, "32": 4, "64": 8}[re.sub(r"\D", "", datatype)]
    else:
        assert tensor._get_content() is not None and len(tensor._get_content()) > 0


def test_build_inputs_bf16_skipped_when_client_cannot(monkeypatch):
    import tritonclient.utils

    monkeypatch.setattr(tritonclient.utils, "triton_to_np_dtype", lambda dt: None)
    inputs = [("X", "BF16", [2])]
    with pytest.raises(SkipInference, match="BF16"):
        build_inputs(_meta(inputs, False), _config(inputs, 0), "http")


def test_build_inputs_dynamic_dims_and_batching():
    inputs = [("A", "FP32", [-1, 4]), ("B", "BYTES", [-1]), ("C", "INT64", [2, -1, 3])]
    for mbs, batch in ((0, []), (8, [1])):
        for protocol in ("http", "grpc"):
            built = build_inputs(_meta(inputs, mbs > 0), _config(inputs, mbs), protocol)
            assert [_described(t) for t in built] == [
                ("A", batch + [DYNAMIC_DIM, 4], "FP32"),
                ("B", batch + [DYNAMIC_DIM], "BYTES"),
                ("C", batch + [2, DYNAMIC_DIM, 3], "INT64"),
            ]


def test_build_inputs_optional_skipped_and_metadata_fallback():
    inputs = [("REQ", "FP32", [2]), ("OPT", "FP32", [2])]
    meta = _meta(inputs, True)
    meta["inputs"].append({"name": "NOCFG", "datatype": "INT32", "shape": [-1, -1, 5]})
    built = build_inputs(meta, _config(inputs, 4, optional=("OPT",)), "http")
    assert [_described(t) for t in built] == [("REQ", [1, 2], "FP32"), ("NOCFG", [1, DYNAMIC_DIM, 5], "INT32")]


def test_grpc_answers_read_as_http_dicts():
    from tritonclient.grpc import model_config_pb2, service_pb2

    meta = service_pb2.ModelMetadataResponse(name="m", inputs=[
        service_pb2.ModelMetadataResponse.TensorMetadata(name="T", datatype="BYTES", shape=[-1, -1]),
        service_pb2.ModelMetadataResponse.TensorMetadata(name="OPT", datatype="FP32", shape=[-1, 2])],
        outputs=[service_pb2.ModelMetadataResponse.TensorMetadata(name="Y", datatype="INT64", shape=[-1, 3])])
    config = model_config_pb2.ModelConfig(name="m", max_batch_size=8, input=[
        model_config_pb2.ModelInput(name="T", data_type=model_config_pb2.TYPE_STRING, dims=[-1]),
        model_config_pb2.ModelInput(name="OPT", data_type=model_config_pb2.TYPE_FP32, dims=[2], optional=True)])
    metadata, cfg = grpc_answers_as_http(meta, config)
    assert metadata["outputs"] == [{"name": "Y", "datatype": "INT64", "shape": [-1, 3]}]
    assert [_described(t) for t in build_inputs(metadata, cfg, "grpc")] == [("T", [1, DYNAMIC_DIM], "BYTES")]
    meta = service_pb2.ModelMetadataResponse(name="s", inputs=[
        service_pb2.ModelMetadataResponse.TensorMetadata(name="X", datatype="FP32", shape=[4])])
    config = model_config_pb2.ModelConfig(name="s", input=[
        model_config_pb2.ModelInput(name="X", data_type=model_config_pb2.TYPE_FP32, dims=[4])])
    assert [_described(t) for t in build_inputs(*grpc_answers_as_http(meta, config), "grpc")] == [("X", [4], "FP32")]


def test_build_inputs_rejects_unknown():
    with pytest.raises(ValueError):
        build_inputs({"inputs": []}, {}, "websocket")
    with pytest.raises(ValueError, match="QUANTUM"):
        build_inputs({"inputs": [{"name": "Q", "datatype": "QUANTUM", "shape": [1]}]}, {}, "http")


def test_report_failures_and_ok():
    report = SmokeReport(address="10.0.0.1", live=True, ready=False, models=[
        ModelSmoke("good", "1", "READY", "", ok=True, latency_ms={"http": 1.0, "grpc": 0.5}),
        ModelSmoke("broken", "1", "UNAVAILABLE", "Internal: SyntaxError: invalid syntax"),
        ModelSmoke("slow", "1", "READY", "", ok=False, error="inference over grpc failed: Deadline Exceeded"),
    ])
    assert not report.ok
    assert report.failures() == [
        "server at 10.0.0.1 is not ready",
        "model 'broken' is UNAVAILABLE: Internal: SyntaxError: invalid syntax",
        "model 'slow': inference over grpc failed: Deadline Exceeded",
    ]
    assert SmokeReport("h", live=True, ready=True, models=[report.models[0]]).ok


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_bounded():
    port = _closed_port()
    start = time.monotonic()
    assert ServerClient(Endpoint("127.0.0.1", port, 0)).wait_ready(timeout_s=1.0, interval_s=0.2) == (False, [])
    report = smoke_test(Endpoint("127.0.0.1", port, _closed_port()), timeout_s=2.0)
    assert time.monotonic() - start < 10
    assert not report.ok and not report.live
    assert any("does not answer" in line for line in report.failures())


# --------------------------------------------------------------------------------------------
# a real tritonserver from the nvidia-pytriton wheel


def _find_wheel() -> Path | None:
    for folder in (CACHE_DIR / "wheels", Path("/tmp/wheel")):
        found = sorted(folder.glob("nvidia_pytriton-*.whl")) if folder.is_dir() else []
        if found:
            return found[-1]
    return None


def _system_python_minor() -> str | None:
    """The Python minor whose shared libpython the stub will embed (the host's system Python)."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    shared = set(re.findall(r"libpython3\.(\d+)\.so\.1\.0", out))
    system_python = shutil.which("python3", path=SYSTEMD_PATH)
    if system_python:
        try:
            minor = subprocess.run([system_python, "-c", "import sys; print(sys.version_info[1])"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            minor = ""
        if minor in shared:
            return f"3.{minor}"
    return f"3.{sorted(shared)[-1]}" if shared else None


@pytest.fixture(scope="session")
def triton_root(tmp_path_factory) -> Path:
    """<tmp>/tritonserver laid out like /opt/tritonserver, from the wheel."""
    wheel = _find_wheel()
    if wheel is None:
        pytest.skip(f"no nvidia_pytriton wheel in {CACHE_DIR / 'wheels'} or /tmp/wheel")
    minor = _system_python_minor()
    if minor is None:
        pytest.skip("no shared libpython3.X on this machine (Debian: apt-get install libpython3.11)")
    system_python = shutil.which("python3", path=SYSTEMD_PATH)
    if system_python is None or subprocess.run([system_python, "-c", "import numpy"],
                                               capture_output=True, timeout=30).returncode != 0:
        pytest.skip("the stub's Python has no numpy (Debian: apt-get install python3-numpy)")

    root = tmp_path_factory.mktemp("opt") / "tritonserver"
    for sub in ("bin", "lib", "backends/python", "caches/local"):
        (root / sub).mkdir(parents=True)
    prefix = "pytriton/tritonserver/"
    stub = f"{prefix}python_backend_stubs/{minor}/triton_python_backend_stub"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        if stub not in names:
            pytest.skip(f"{wheel.name} has no stub for Python {minor}")
        for name in names:
            if name.endswith("/"):
                continue
            if name.startswith("nvidia_pytriton.libs/"):
                dest = root / "lib" / Path(name).name
            elif name == f"{prefix}bin/tritonserver":
                dest = root / "bin" / "tritonserver"
            elif name.startswith(f"{prefix}backends/python/"):
                dest = root / "backends" / "python" / Path(name).name
            elif name.startswith(f"{prefix}caches/local/"):
                dest = root / "caches" / "local" / Path(name).name
            elif name == stub:
                dest = root / "backends" / "python" / "triton_python_backend_stub"
            else:
                continue
            with zf.open(name) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    (root / "bin" / "tritonserver").chmod(0o755)
    (root / "backends" / "python" / "triton_python_backend_stub").chmod(0o755)
    return root


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Server:
    def __init__(self, root: Path, repository: Path, log: Path, args=()):
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)
        self.log = log
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
        env["LD_LIBRARY_PATH"] = str(root / "lib")
        # The embedded interpreter finds its prefix by looking up `python3` on PATH: a pyenv/venv
        # python3 first on PATH makes it load that stdlib and miss the system's dist-packages
        # (numpy). systemd's default PATH, as a host's service gets it, finds the system python3.
        env["PATH"] = SYSTEMD_PATH
        cmd = [str(root / "bin" / "tritonserver"),
               f"--model-repository={repository}",
               f"--backend-directory={root / 'backends'}",  # no trailing slash (server#6730)
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}",
               "--exit-on-error=false", "--exit-timeout-secs=5", *args]
        self._logf = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: server and its stubs
                self.proc.wait(timeout=10)
        self._logf.close()


@pytest.fixture
def start_server(triton_root, tmp_path):
    servers: list[Server] = []

    def start(repository: Path, args=()) -> Server:
        server = Server(triton_root, repository, tmp_path / f"tritonserver-{len(servers)}.log", args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.mark.server
def test_model_with_syntax_error_is_reported_not_ready(start_server, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "add_sub", repo / "add_sub")
    shutil.copytree(EXAMPLES / "add_sub", repo / "broken")
    (repo / "broken" / "config.pbtxt").write_text(
        (repo / "broken" / "config.pbtxt").read_text().replace('name: "add_sub"', 'name: "broken"'))
    (repo / "broken" / "1" / "model.py").write_text("import numpy\n\ndef oops(:\n    pass\n")
    server = start_server(repo)

    start = time.monotonic()
    ready, index = ServerClient(Endpoint("127.0.0.1", server.http_port, server.grpc_port)).wait_ready(timeout_s=120)
    assert not ready
    assert time.monotonic() - start < 90, "wait_ready should stop once no model is LOADING"
    states = {m["name"]: m["state"] for m in index}
    assert states == {"add_sub": "READY", "broken": "UNAVAILABLE"}, server.log_text()

    report = smoke_test(Endpoint("127.0.0.1", server.http_port, server.grpc_port), timeout_s=30)
    assert report.live and not report.ready and not report.ok
    by_name = {m.name: m for m in report.models}
    assert by_name["add_sub"].ok
    broken = by_name["broken"]
    assert broken.state == "UNAVAILABLE" and not broken.ok
    assert "SyntaxError" in broken.reason, broken.reason
    failures = report.failures()
    assert any(line.startswith("model 'broken' is UNAVAILABLE: ") and "SyntaxError" in line
               for line in failures), failures
