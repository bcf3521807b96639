"""GPU facts and placement: nvidia-smi's CSV parsed by its header, the query asked again on drivers that know no
compute_cap, instance groups checked against the host's GPUs and driver, `--model-config-name` variants, status.

No test here runs on a GPU: the outputs are recordings from public threads and hand-written ones
(tests/fixtures/nvidia-smi/README.md says which). scripts/gpu-check.sh is the check on a real GPU.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tritonfleet.engine import evidence
from tritonfleet.engine.evidence import Gpu
from tritonfleet.engine.varspec import checked_vars
from tritonfleet.errors import InventoryError
from tritonfleet.fleet.status import host_status
from tritonfleet.triton import layout
from tritonfleet.triton.facts import parse_facts
from tritonfleet.triton.models import validate_repository

NVIDIA_SMI = Path(__file__).parent / "fixtures" / "nvidia-smi"
HOSTS = Path(__file__).parent / "fixtures" / "hosts"


def smi(name: str) -> str:
    return (NVIDIA_SMI / name).read_text()


# ---- parsing -----------------------------------------------------------------------------------------------------

H100 = "NVIDIA H100 80GB HBM3"
FOUR_GPUS = [
    Gpu(0, H100, "550.54.15", 81559, "GPU-4c1e8a2b-7d3f-4e9a-b5c6-0d1e2f3a4b5c", "9.0", "Disabled"),
    Gpu(1, H100, "550.54.15", 81559, "GPU-5d2f9b3c-8e4a-4fab-86d7-1e2f3a4b5c6d", "9.0", "Enabled"),
    Gpu(2, "NVIDIA GH200 480GB", "550.54.15", 0, "GPU-6e3a0c4d-9f5b-40bc-97e8-2f3a4b5c6d7e", "9.0", "Disabled"),
    Gpu(3, "Tesla M60", "550.54.15", 8192, "GPU-7f4b1d5e-a06c-41cd-a8f9-3a4b5c6d7e8f", "5.2", ""),
]


@pytest.mark.parametrize("name,fields,gpus", [
    ("handwritten-four-gpus.csv", None, FOUR_GPUS),
    ("handwritten-r470-asked-again.txt", None,
     [Gpu(0, "Tesla T4", "470.82.01", 15109, "GPU-8a5c2e6f-b17d-42de-b90a-4b5c6d7e8f90")]),
    ("recorded-server-pr8070-titan-v-rtx5880.csv", None,
     [Gpu(0, "NVIDIA TITAN V", "570.86.15", 0, compute_cap="7.0"),
      Gpu(1, "NVIDIA RTX 5880 Ada Generation", "570.86.15", 0, compute_cap="8.9")]),
    ("recorded-nvtop-pr470-rtx.csv", None, [Gpu(0, "", "", 0)]),  # [N/A]: no MIG on this GPU
    ("recorded-nvtop-pr470-a100.csv", None, [Gpu(0, "", "", 0, mig_mode="Disabled"),
                                             Gpu(1, "", "", 0, mig_mode="Disabled")]),
    ("recorded-inference-snaps-128.csv", None, [Gpu(0, "", "", 0, compute_cap="8.9")]),
    ("recorded-inference-snaps-89-r470.txt", None, []),  # the refusal is no GPU
    ("recorded-i3pystatus-pr776-na.csv", ("memory.total", "memory.free", "memory.used", "temperature.gpu",
                                          "fan.speed", "utilization.gpu", "utilization.memory"), [Gpu(0, "", "", 2004)]),
    ("recorded-i3pystatus-pr776-not-supported.csv", ("memory.total", "memory.free", "memory.used", "temperature.gpu",
                                                     "fan.speed", "utilization.gpu", "utilization.memory"),
     [Gpu(0, "", "", 2004)]),
])
def test_nvidia_smi_outputs(name, fields, gpus):
    assert evidence.parse_gpus(smi(name), *([fields] if fields else [])) == gpus


def test_units_and_unreadable_values():
    text = "index, name, memory.total [MiB], compute_cap\n0, NVIDIA A10, 23028 MiB, [Not Supported]\n"
    assert evidence.parse_gpus(text) == [Gpu(0, "NVIDIA A10", "", 23028)]


def test_describe_for_status():
    assert [g.describe() for g in FOUR_GPUS[1:4:2]] == [
        "1: NVIDIA H100 80GB HBM3 (81559 MiB, driver 550.54.15, compute 9.0, MIG enabled)",
        "3: Tesla M60 (8192 MiB, driver 550.54.15, compute 5.2)"]


# ---- the probe under sh ------------------------------------------------------------------------------------------

def gpus_section(tmp_path: Path, nvidia_smi: str) -> tuple[str, list[str]]:
    """The gpus fragment run with a stand-in nvidia-smi: the section and the argument lists it was called with."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n{nvidia_smi}\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    out = subprocess.run(["/bin/sh", "-c", evidence.script(evidence.gpus())], env={"PATH": str(bin_dir)},
                         capture_output=True, text=True, check=True).stdout
    return evidence.parse_output(out).sections["gpus"], calls.read_text().splitlines()


def test_the_query_keeps_the_header_and_asks_once(tmp_path):
    section, calls = gpus_section(tmp_path, f"exec /bin/cat {NVIDIA_SMI / 'handwritten-four-gpus.csv'}")
    assert calls == ["--query-gpu=index,name,uuid,memory.total,driver_version,compute_cap,mig.mode.current "
                     "--format=csv,nounits"]
    assert evidence.parse_gpus(section) == FOUR_GPUS


def test_a_driver_without_compute_cap_is_asked_again_without_it(tmp_path):
    refuse = ('case "$*" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; echo; '
              'exit 2 ;; esac\n'
              "printf 'index, name, uuid, memory.total [MiB], driver_version\\n0, Tesla T4, GPU-1, 15109, 470.82.01\\n'")
    section, calls = gpus_section(tmp_path, refuse)
    assert len(calls) == 2 and calls[1].startswith("--query-gpu=index,name,uuid,memory.total,driver_version ")
    assert evidence.parse_gpus(section) == [Gpu(0, "Tesla T4", "470.82.01", 15109, "GPU-1")]


def test_a_broken_driver_is_not_asked_again(tmp_path):
    section, calls = gpus_section(tmp_path, "echo 'NVIDIA-SMI has failed because it couldn'\"'\"'t communicate with "
                                            "the NVIDIA driver.'; exit 9")
    assert len(calls) == 1 and evidence.parse_gpus(section) == []


# ---- placement ---------------------------------------------------------------------------------------------------

PY_MODEL = 'name: "{name}"\nbackend: "python"\n{groups}input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ]\n' \
           'output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]\n'
MODEL_PY = "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n"


def model(root: Path, name: str, groups: str = "", variants: dict | None = None) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(MODEL_PY)
    (root / name / "config.pbtxt").write_text(PY_MODEL.format(name=name, groups=groups))
    for variant, text in (variants or {}).items():
        (root / name / "configs").mkdir(exist_ok=True)
        (root / name / "configs" / f"{variant}.pbtxt").write_text(text)


def gpu_host(csv: str = "handwritten-four-gpus.csv"):
    text = (HOSTS / "handwritten-debian12-fresh.facts.txt").read_text()
    return parse_facts(f"{text}@@begin gpus\n{smi(csv)}@@end\n")


BUNDLE = SimpleNamespace(bundle_id="b", python_versions=("3.11",), backends=("python",))


def problems(tmp_path: Path, server_args=(), host=None) -> list[str]:
    return layout.preflight_problems(host or gpu_host(), BUNDLE, validate_repository(tmp_path), list(server_args))


@pytest.mark.parametrize("groups,wanted", [
    ("instance_group [ { kind: KIND_GPU gpus: [ 0, 1 ] } ]\n", []),
    ("instance_group [ { kind: KIND_GPU } ]\n", []),  # every usable GPU
    ("instance_group [ { name: \"far\" kind: KIND_GPU gpus: [ 7 ] } ]\n",
     ["model m's instance group far (config.pbtxt of the model) names GPU(s) 7 but the host's GPUs are 0: NVIDIA H100"]),
    ("instance_group [ { kind: KIND_GPU gpus: [ 3 ] } ]\n",
     ["model m's instance group (unnamed) (config.pbtxt of the model) names GPU(s) 3, below the minimum compute "
      "capability 6 Triton uses"]),
    ("instance_group [ { kind: KIND_CPU } ]\n", []),
])
def test_instance_groups_against_the_hosts_gpus(tmp_path, groups, wanted):
    model(tmp_path, "m", groups)
    found = problems(tmp_path)
    assert [p[:len(w)] for p, w in zip(found, wanted)] == wanted and len(found) == len(wanted), found


def test_a_lower_minimum_compute_capability_admits_the_older_gpu(tmp_path):
    model(tmp_path, "m", "instance_group [ { kind: KIND_GPU gpus: [ 3 ] } ]\n")
    assert problems(tmp_path, ["--min-supported-compute-capability=5.0"]) == []


def test_every_gpu_below_the_minimum(tmp_path):
    model(tmp_path, "m", "instance_group [ { kind: KIND_GPU } ]\n")
    m60 = gpu_host()
    m60.gpus = m60.gpus[3:]
    assert problems(tmp_path, host=m60)[0].startswith("model m's instance group (unnamed) (config.pbtxt of the model) "
                                                      "asks for every GPU but none reaches")


@pytest.mark.parametrize("driver,refused", [("470.82.01", True), ("525.60.13", False), ("560.35.03", False)])
def test_driver_too_old_for_the_bundles_cuda(tmp_path, driver, refused):
    model(tmp_path, "m", "instance_group [ { kind: KIND_GPU } ]\n")
    host = gpu_host()
    host.gpus = [Gpu(0, H100, driver, 81559, compute_cap="9.0")]
    found = problems(tmp_path, host=host)
    assert bool(found) is refused
    if refused:
        assert found[0].startswith("model(s) m ask for KIND_GPU instances but the host's NVIDIA driver 470.82.01 is "
                                   "older than 525.60.13")
        assert "install driver 560.28.03 or newer" in found[0] and layout.CUDA_COMPATIBILITY_DOC in found[0]


def test_driver_note_between_minor_version_compatibility_and_cudas_own():
    assert layout.driver_note([Gpu(0, H100, "535.104.05", 1)]).startswith(
        "driver 535.104.05 runs CUDA 12.6 by minor version compatibility")
    assert layout.driver_note([Gpu(0, H100, "560.28.03", 1)]) == layout.driver_note([]) == ""


def test_cpu_models_on_a_host_with_an_old_driver_are_fine(tmp_path):
    model(tmp_path, "m", "instance_group [ { kind: KIND_CPU } ]\n")
    host = gpu_host()
    host.gpus = [Gpu(0, "Tesla K80", "470.82.01", 11441, compute_cap="3.7")]
    assert problems(tmp_path, host=host) == []


# ---- --model-config-name -----------------------------------------------------------------------------------------

H100_CONFIG = PY_MODEL.format(name="m", groups="instance_group [ { kind: KIND_GPU gpus: [ 0, 1, 2, 3, 4, 5, 6, 7 ] } ]\n")


def test_the_variant_config_is_what_placement_checks(tmp_path):
    model(tmp_path, "m", "instance_group [ { kind: KIND_CPU } ]\n", {"h100": H100_CONFIG})
    model(tmp_path, "other", "instance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]\n")  # no variant: config.pbtxt
    assert problems(tmp_path) == []
    found = problems(tmp_path, ["--model-config-name=h100"])
    wanted = ["model m's instance group (unnamed) (configs/h100.pbtxt of the model) names GPU(s) 4, 5, 6, 7 but",
              "model m's instance group (unnamed) (configs/h100.pbtxt of the model) names GPU(s) 3, below the"]
    assert len(found) == 2 and all(p.startswith(w) for p, w in zip(found, wanted)), found
    assert problems(tmp_path, ["--model-config-name=a100"]) == []  # no model has it: config.pbtxt everywhere


def test_a_broken_variant_is_refused_like_a_broken_config(tmp_path):
    model(tmp_path, "m", variants={"h100": 'name: "m"\nbackend: "python"\nbogus_field: 1\n'})
    found = problems(tmp_path, ["--model-config-name=h100"])
    assert len(found) == 1 and found[0].startswith("--model-config-name=h100: ")
    assert f"{tmp_path.resolve()}/m/configs/h100.pbtxt:3: model 'm': " in found[0]
    model(tmp_path, "n", variants={"h100": PY_MODEL.format(name="other", groups="")})
    assert any("does not match its folder" in p for p in problems(tmp_path, ["--model-config-name=h100"]))


def test_the_var_becomes_the_flag(tmp_path):
    types = {"triton_model_config_name": layout.VAR_TYPES["triton_model_config_name"]}
    for bad in ("../h100", "a b", "-x"):
        with pytest.raises(InventoryError, match="not a config file name"):
            checked_vars({"triton_model_config_name": bad}, types, "gpu01", {})
    hostvars = dict(layout.DEFAULT_VARS, triton_model_config_name="h100")
    assert "--model-config-name=h100" in layout.server_args(hostvars)
    assert not any(a.startswith("--model-config-name") for a in layout.server_args(dict(layout.DEFAULT_VARS)))


# ---- status ------------------------------------------------------------------------------------------------------

class FactsOnly:
    """A host connection answering the facts script with a fixture."""

    def __init__(self, text: str):
        self.text = text

    def run(self, command: str, **kw):
        return SimpleNamespace(stdout=self.text, stderr="", ok=True)


def test_status_shows_each_hosts_gpus():
    conn = FactsOnly((HOSTS / "handwritten-ubuntu22-aarch64-gh200.facts.txt").read_text())
    status = host_status(SimpleNamespace(name="gh01", address="192.0.2.1"), conn, dict(layout.DEFAULT_VARS))
    assert status.gpus == ["0: NVIDIA GH200 480GB (97871 MiB, driver 560.35.03, compute 9.0, MIG disabled)"]


# ---- scripts/gpu-check.sh, as far as a machine without a GPU can take it -----------------------------------------

GPU_CHECK = Path(__file__).parent.parent / "scripts" / "gpu-check.sh"


def test_gpu_check_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True).returncode == 0


def test_gpu_check_refuses_clearly_without_nvidia_smi(tmp_path):
    (tmp_path / "dirname").symlink_to(shutil.which("dirname"))  # the only tool it needs before that check
    res = subprocess.run([shutil.which("bash"), str(GPU_CHECK), str(tmp_path / "bundle.tar.gz")], capture_output=True,
                         text=True, env={"PATH": str(tmp_path)}, timeout=30)
    assert res.returncode == 2 and "no nvidia-smi on PATH" in res.stdout
