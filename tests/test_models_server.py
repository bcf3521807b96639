"""What a real tritonserver 2.51 does with the repositories that validation accepts, refuses, or refuses because
they crash the server. Marked `server`: they start the tritonserver of the cached nvidia-pytriton wheel on
127.0.0.1 (fixtures of test_smoke.py), about 15 seconds in all."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import test_smoke
from test_models import ensemble, problems_of, python_model
from test_models_triton_rules import AUTO_COMPLETE_PY, config, configless, cyclic
from tritonfleet.triton.endpoint import Endpoint
from tritonfleet.triton.models import validate_repository
from tritonfleet.triton.server import ServerClient

pytestmark = pytest.mark.server
triton_root, start_server = test_smoke.triton_root, test_smoke.start_server  # fixtures: a server on 127.0.0.1


def settled_index(server) -> tuple[bool, dict[str, dict]]:
    ready, index = ServerClient(Endpoint("127.0.0.1", server.http_port, server.grpc_port)).wait_ready(timeout_s=90)
    return ready, {m["name"]: m for m in index}


def test_triton_loads_what_validation_accepts(start_server, tmp_path):
    repo = tmp_path / "models"
    python_model(repo, "version_zero", versions=(0,))
    python_model(repo, "superscript_beside_one", versions=(1, "\u00b2"))
    configless(repo, "no_config")
    python_model(repo, "dims_by_auto_complete", config=config("dims_by_auto_complete", dims="[ ]"),
                 model_py=AUTO_COMPLETE_PY)
    models = validate_repository(repo).models
    assert models["version_zero"].versions == (0,) and models["superscript_beside_one"].versions == (1,)

    server = start_server(repo)
    ready, index = settled_index(server)
    assert ready, f"{index}\n{server.log_text()}"
    assert {name: (m["version"], m["state"]) for name, m in index.items()} == {
        "version_zero": ("0", "READY"), "superscript_beside_one": ("1", "READY"),
        "no_config": ("1", "READY"), "dims_by_auto_complete": ("1", "READY")}


def test_triton_refuses_what_validation_refuses(start_server, tmp_path):
    repo = tmp_path / "models"
    python_model(repo, "ok")
    refused = {
        "max_batch_size_negative": lambda r, n: python_model(r, n, config=config(n, max_batch_size=-5)),
        "dims_zero": lambda r, n: python_model(r, n, config=config(n, dims="[ 0 ]")),
        "dims_minus_two": lambda r, n: python_model(r, n, config=config(n, dims="[ -2 ]")),
        "dims_empty": lambda r, n: python_model(r, n, config=config(n, dims="[ ]", max_batch_size=4)),
        "preferred_above_max": lambda r, n: python_model(r, n, config=config(
            n, max_batch_size=4, extra="dynamic_batching { preferred_batch_size: [ 8 ] }\n")),
        "policy_selects_none": lambda r, n: python_model(r, n, config=config(
            n, extra="version_policy: { specific: { versions: [ 3 ] } }\n")),
        "pyhton": lambda r, n: python_model(r, n, config=config(n, backend='backend: "pyhton"')),
        "capital_python": lambda r, n: python_model(r, n, config=config(n, backend='backend: "Python"')),
        "onnx_as_backend": lambda r, n: python_model(r, n, config=config(n, backend='backend: "onnxruntime_onnx"')),
        "leading_zero": lambda r, n: python_model(r, n, config=config(n), versions=("01",)),
        "arabic_one": lambda r, n: python_model(r, n, config=config(n), versions=("\u0661",)),
        "uses_itself": lambda r, n: cyclic(r, {n: n}),
        "step_without_version": lambda r, n: ensemble(
            r, n, '{ model_name: "ok" input_map { key: "IN" value: "X" } output_map { key: "OUT" value: "Y" } }'),
    }
    for name, build in refused.items():
        build(repo, name)
    assert {p.model for p in problems_of(repo)} == set(refused)

    server = start_server(repo)
    ready, index = settled_index(server)
    assert not ready
    assert index["ok"]["state"] == "READY", server.log_text()
    not_loaded = {name for name in refused if index.get(name, {}).get("state") != "READY"}
    assert not_loaded == set(refused), f"{index}\n{server.log_text()}"


def huge_version_folder(repo: Path) -> None:
    python_model(repo, "m", versions=(1, 99999999999999999999))


def ensemble_reaching_a_cycle(repo: Path) -> None:
    cyclic(repo, {"a": "b", "b": "a", "c": "a"})


@pytest.mark.parametrize("build, returncode, log_line", [
    (huge_version_folder, -6, "terminate called after throwing an instance of 'std::out_of_range'"),
    (ensemble_reaching_a_cycle, -11, ""),
])
def test_triton_dies_on_what_validation_refuses(start_server, tmp_path, build, returncode, log_line):
    repo = tmp_path / "models"
    build(repo)
    assert problems_of(repo)
    server = start_server(repo)
    try:
        server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tritonserver kept running:\n{server.log_text()}")
    assert server.proc.returncode == returncode, server.log_text()
    assert log_line in server.log_text()
