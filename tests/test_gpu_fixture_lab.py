"""GPU placement end to end on a lab host that has NO GPU: gpu07 carries a FAKE `nvidia-smi` that prints a
hand-written recording (tests/fixtures/nvidia-smi/handwritten-four-gpus.csv: GPUs 0-3). This is a fixture, not a
GPU test: it proves that the facts read over SSH reach the preflight and `status`, and that a model variant chosen
by `triton_model_config_name` is validated for the host it is deployed to. tritonserver itself sees no GPU; the
models that do deploy are KIND_CPU. scripts/gpu-check.sh is the check on a real GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labkit import ensure_mine, fault_log, invoke, on_host, report_of, show, write_inventory  # noqa: F401
from tritonfleet.paths import REPO_ROOT

pytestmark = pytest.mark.lab

HOST = "gpu07"
RECORDING = Path(__file__).parent / "fixtures" / "nvidia-smi" / "handwritten-four-gpus.csv"
AREA = "GPU placement (fake nvidia-smi fixture)"


@pytest.fixture(scope="module")
def gpu_fixture_host(lab):
    ensure_mine((HOST,))
    lab.reset(HOST)
    script = ("#!/bin/sh\n# FIXTURE (tritonfleet tests): prints a hand-written nvidia-smi recording; no GPU here\n"
              f"cat <<'CSV'\n{RECORDING.read_text()}CSV\n")
    on_host(HOST, f"cat > /usr/local/bin/nvidia-smi <<'SCRIPT'\n{script}SCRIPT\nchmod 0755 /usr/local/bin/nvidia-smi")
    yield HOST
    on_host(HOST, "rm -f /usr/local/bin/nvidia-smi", check=False)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """add_sub (KIND_CPU) with a `configs/h100.pbtxt` variant that places its instance on GPU 7."""
    root = tmp_path_factory.mktemp("gpu-models")
    shutil.copytree(REPO_ROOT / "examples" / "models" / "add_sub", root / "add_sub")
    config = (root / "add_sub" / "config.pbtxt").read_text()
    (root / "add_sub" / "configs").mkdir()
    (root / "add_sub" / "configs" / "h100.pbtxt").write_text(config.replace(
        "    count: 1\n    kind: KIND_CPU\n", "    name: \"far\"\n    count: 1\n    kind: KIND_GPU\n    gpus: [ 7 ]\n"))
    return root


def deploy(inventory: str, repository: Path):
    proc = invoke("deploy", "--host", HOST, "--inventory", inventory, "--models", str(repository), "--json")
    return proc, report_of(proc)


def test_status_shows_the_gpus_the_hosts_nvidia_smi_reports(gpu_fixture_host, tmp_path):
    inventory = write_inventory(tmp_path / "hosts.yml", {HOST: {}})
    proc = invoke("status", "--host", HOST, "--inventory", inventory, "--json")
    row = report_of(proc)["hosts"][0]
    assert row["gpus"][0] == "0: NVIDIA H100 80GB HBM3 (81559 MiB, driver 550.54.15, compute 9.0, MIG disabled)", row
    assert len(row["gpus"]) == 4 and row["gpus"][3].startswith("3: Tesla M60")


def test_a_variant_placing_an_instance_on_a_gpu_the_host_lacks_is_refused_untouched(gpu_fixture_host, repository,
                                                                                   tmp_path, fault_log):
    inventory = write_inventory(tmp_path / "hosts.yml", {HOST: {"triton_model_config_name": "h100"}})
    proc, report = deploy(inventory, repository)
    assert proc.returncode == 1, show(proc)
    step = next(s for s in report["hosts"][0]["steps"] if s["status"] == "failed")
    assert step["module"] == "triton_preflight"
    assert "model add_sub's instance group far (configs/h100.pbtxt" in step["msg"]
    assert "names GPU(s) 7 but the host's GPUs are 0: NVIDIA H100" in step["msg"]
    assert on_host(HOST, "id triton >/dev/null 2>&1 && echo user; ls /opt; true") == ""  # nothing made
    fault_log(AREA, "`triton_model_config_name: h100` selects a variant placing an instance on GPU 7 of a host "
                    "whose nvidia-smi (a fake printing a 4-GPU recording) lists GPUs 0-3",
              "refused by the preflight before anything changed, naming the variant file, the instance group and "
              "the host's GPUs")


def test_the_same_repository_without_the_variant_deploys_on_that_host(gpu_fixture_host, repository, tmp_path):
    inventory = write_inventory(tmp_path / "hosts.yml", {HOST: {}})
    proc, report = deploy(inventory, repository)
    assert proc.returncode == 0, show(proc)
    smoke = next(s for s in report["hosts"][0]["steps"] if s["module"] == "smoke")
    assert smoke["data"]["smoke"]["add_sub"]["ok"]
    argv = on_host(HOST, "tr '\\0' '\\n' < /proc/$(systemctl show tritonserver -p MainPID --value)/cmdline")
    assert not [a for a in argv.splitlines() if a.startswith("--model-config-name")]
