"""The facts script and its parser: recorded and hand-written host outputs, and the script run under `sh` here.

tests/fixtures/hosts/README.md says which outputs are recordings and which are written by hand. The script runs
read-only; its Triton paths point into tmp_path where a test needs a deployed host.
"""

from __future__ import annotations

import hashlib
import os
import platform
import pwd
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tritonfleet.engine.evidence import Gpu
from tritonfleet.errors import TritonfleetError
from tritonfleet.triton import facts as factsmod
from tritonfleet.triton import layout
from tritonfleet.triton import releases
from tritonfleet.triton.facts import parse_facts

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # what a command over SSH finds


def fixture(name: str):
    return parse_facts((FIXTURES / name).read_text())


def run_facts(triton_user: str, models_path: str, path: str = SYSTEM_PATH) -> str:
    res = subprocess.run(["/bin/sh", "-c", factsmod.gather_command(triton_user, models_path)],
                         env={"PATH": path}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr  # gather_facts fails the host on any other exit status
    return res.stdout


@pytest.mark.parametrize("name,expected", [
    ("recorded-debian12-container.facts.txt",
     dict(os_id="debian", os_version="12", os_name="Debian GNU/Linux 12 (bookworm)", init="process_api",
          python_version="3.11", pkg_mgr="apt", gpus=[], service={}, user_exists=False, live_release="",
          releases=[], history=[], unit_sha256="", server_cmdline="", architectures=["x86_64"],
          glibc_version="2.36", glibcxx_version="3.4.30", numpy_version="1.24.2",
          numpy_path="/usr/lib/python3/dist-packages/numpy-1.24.2.egg-info")),
    ("recorded-debian11-chroot.facts.txt",
     dict(os_id="debian", os_version="11", python_version="3.9", architectures=["x86_64"], glibc_version="2.31",
          glibcxx_version="3.4.28", numpy_version="1.19.5")),
    ("recorded-debian13-chroot.facts.txt",
     dict(os_id="debian", os_version="13", python_version="3.13", architectures=["x86_64"], glibc_version="2.41",
          glibcxx_version="3.4.33", numpy_version="2.2.4",
          numpy_path="/usr/lib/python3/dist-packages/numpy-2.2.4.dist-info")),
    ("handwritten-ubuntu22-aarch64-gh200.facts.txt",
     dict(os_id="ubuntu", architectures=["aarch64"], glibc_version="2.35", glibcxx_version="3.4.30",
          numpy_version="1.21.5", gpus=[Gpu(0, "NVIDIA GH200 480GB", "560.35.03", 97871,
                                            "GPU-0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "9.0", "Disabled")])),
    ("handwritten-debian12-fresh.facts.txt",
     dict(os_id="debian", init="systemd", python_version="3.11", pkg_mgr="apt", disk_free_kb=30412876,
          shm_kb=1018264, user_exists=False, releases=[], model_repos=[], history=[])),
    ("handwritten-debian12-live.facts.txt",
     dict(user_exists=True, live_release="/opt/tritonfleet/releases/triton-2.51.0-0123456789ab",
          releases=["triton-2.50.0-ba9876543210", "triton-2.51.0-0123456789ab"], live_stub="triton 755 same",
          live_models="/srv/tritonfleet/models-releases/9a1b2c3d4e5f6a7b",
          model_repos=["1f2e3d4c5b6a7980", "9a1b2c3d4e5f6a7b"], root_is_unmanaged=False,
          models_is_unmanaged=False, shm_kb=32768000, disk_free_kb=52428800,
          gpus=[Gpu(0, "NVIDIA A100-SXM4-80GB", "535.104.05", 81920, "GPU-6f3a9a1e-2b7c-4c1d-9e0f-1a2b3c4d5e6f",
                    "8.0", "Disabled"),
                Gpu(1, "NVIDIA A100-SXM4-80GB", "535.104.05", 81920, "GPU-7e4b0b2f-3c8d-4d2e-8f1a-2b3c4d5e6f70",
                    "8.0", "Disabled")])),
    ("handwritten-rocky9-dnf.facts.txt",
     dict(os_id="rocky", os_version="9.4", python_version="3.9", pkg_mgr="dnf",
          packages={"rpm", "python3", "python3-libs", "dnf"}, architectures=["x86_64"], glibc_version="2.34",
          glibcxx_version="3.4.29", numpy_version="")),
    ("handwritten-debian12-no-python3.facts.txt", dict(python_version="", pkg_mgr="apt")),
])
def test_parse_facts_of_host_outputs(name, expected):
    facts = fixture(name)
    assert {key: getattr(facts, key) for key in expected} == expected


def test_recorded_packages_are_names_without_status_or_architecture():
    facts = fixture("recorded-debian12-container.facts.txt")
    assert {"dpkg", "base-files", "python3.11"} <= facts.packages
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", name) for name in facts.packages)


def test_live_host_history_service_and_server_mode():
    facts = fixture("handwritten-debian12-live.facts.txt")
    assert facts.live.id == "triton-2.51.0-0123456789ab+9a1b2c3d4e5f"
    assert [r.created for r in facts.history] == ["2024-11-20T09:00:00Z", "2024-11-25T15:08:24Z"]
    assert facts.service["ActiveState"] == "active" and facts.service["UptimeSeconds"] == "3605"
    assert "ActiveEnterTimestamp" not in facts.service  # turned into UptimeSeconds on the host
    assert facts.server_mode == "explicit"
    assert fixture("handwritten-debian12-fresh.facts.txt").server_mode == ""


def test_summary_and_as_dict_shapes():
    facts = fixture("handwritten-debian12-live.facts.txt")
    data = facts.as_dict()
    assert data["packages"] == sorted(facts.packages) and data["gpus"][0]["memory_mib"] == 81920
    assert data["history"][-1]["bundle_id"] == "triton-2.51.0-0123456789ab"
    summary = facts.summary()
    assert "packages" not in summary and summary["live_stub"] == "triton 755 same"


# ---- packages by role, from the facts ----------------------------------------------------------------------------

@pytest.mark.parametrize("pkg_mgr,python_version,libpython", [
    ("apt", "3.11", "libpython3.11"), ("dnf", "3.9", "python3-libs"), ("yum", "3.6", "python3-libs"),
    ("zypper", "3.11", "libpython3_11-1_0"),
])
def test_host_packages_by_role(pkg_mgr, python_version, libpython):
    pkgs = layout.host_packages(pkg_mgr, python_version)
    assert (pkgs.libpython, pkgs.numpy, pkgs.rsync) == (libpython, "python3-numpy", "rsync")
    assert layout.python_packages(pkg_mgr, python_version) == [libpython, "python3-numpy", "rsync"]


def test_unknown_package_manager_is_refused_with_a_hint():
    with pytest.raises(TritonfleetError) as err:
        layout.host_packages("pacman", "3.12")
    assert "pacman" in str(err.value) and "triton_packages" in err.value.hint


@pytest.mark.parametrize("name,missing", [
    ("handwritten-debian12-fresh.facts.txt", ["libpython3.11", "python3-numpy", "rsync"]),
    ("handwritten-debian12-live.facts.txt", []),
    ("handwritten-rocky9-dnf.facts.txt", ["python3-numpy", "rsync"]),
])
def test_packages_a_deploy_would_install(name, missing):
    facts = fixture(name)
    wanted = layout.python_packages(facts.pkg_mgr, facts.python_version)
    assert [n for n in wanted if n not in facts.packages] == missing


# ---- preflight over parsed facts ---------------------------------------------------------------------------------

BUNDLE = SimpleNamespace(bundle_id="b", python_versions=("3.10", "3.11", "3.12"), backends=("python",))
NO_MODELS = SimpleNamespace(models={})


@pytest.mark.parametrize("name,problem", [
    ("handwritten-debian12-fresh.facts.txt", None),
    ("handwritten-debian12-live.facts.txt", None),
    ("recorded-debian12-container.facts.txt", "PID 1 is 'process_api', not systemd"),
    ("handwritten-debian12-no-python3.facts.txt", "the host has no python3"),
    ("handwritten-rocky9-dnf.facts.txt", "the host's python3 is 3.9 but bundle b has stubs only for"),
])
def test_preflight_of_host_outputs(name, problem):
    problems = layout.preflight_problems(fixture(name), BUNDLE, NO_MODELS)
    assert [p[:len(problem)] for p in problems] == ([problem] if problem else [])


# ---- the script itself -------------------------------------------------------------------------------------------

def test_facts_script_is_valid_sh_and_asks_each_thing_once():
    cmd = factsmod.gather_command("triton", "/srv/tritonfleet/models")
    assert subprocess.run(["/bin/sh", "-n", "-c", cmd], capture_output=True).returncode == 0
    script = factsmod._SCRIPT
    assert script.count("systemctl ") == 1 and script.count("df -Pk") == 1 and "readlink -f" in script
    assert "sed " not in script  # the shell reads systemctl's answer and the history itself


def counted(bin_dir: Path, log: Path, name: str, body: str = "") -> None:
    """A stand-in tool that logs its name, then runs `body` or the real tool."""
    run = body or f'exec {shutil.which(name, path=SYSTEM_PATH)} "$@"'
    (bin_dir / name).write_text(f"#!/bin/sh\necho {name} >> {log}\n{run}\n")
    (bin_dir / name).chmod(0o755)


def test_facts_script_starts_only_these_processes(tmp_path):
    """The no-op deploy runs this on every host every run: each process it starts is counted here. numpy's and
    glibc's versions, libstdc++ and the architecture cost none (globs and the package list the script reads anyway)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "started"
    bin_dir.mkdir()
    for name in ("readlink", "getent", "df", "awk", "sh"):
        counted(bin_dir, log, name)
    counted(bin_dir, log, "dpkg-query", "printf 'ii libc6 amd64 2.36-9+deb12u7\\nii python3 amd64 3.11.2-1\\n'")
    counted(bin_dir, log, "systemctl", "true")
    gpus_csv = Path(__file__).parent / "fixtures" / "nvidia-smi" / "handwritten-four-gpus.csv"
    counted(bin_dir, log, "nvidia-smi", f"exec {shutil.which('cat', path=SYSTEM_PATH)} {gpus_csv}")
    counted(bin_dir, log, "python3.42", "echo never")
    (bin_dir / "python3").symlink_to("python3.42")
    for name in ("apt-get", "timeout", "stat", "cmp", "sha256sum", "tr"):
        counted(bin_dir, log, name, "false")
    facts = parse_facts(run_facts("triton", str(tmp_path / "models"), str(bin_dir)))
    assert (facts.glibc_version, facts.architectures, len(facts.gpus)) == ("2.36", ["x86_64"], 4)
    # sorted: the two ends of a pipeline (df | awk) start in either order
    assert sorted(log.read_text().split()) == sorted(["sh", "readlink", "dpkg-query", "nvidia-smi", "df", "awk",
                                                      "systemctl", "getent", "readlink", "readlink"])


def test_facts_script_runs_here():
    facts = parse_facts(run_facts("triton", "/srv/tritonfleet/models"))
    assert facts.os_id == platform.freedesktop_os_release()["ID"]
    python3 = shutil.which("python3", path=SYSTEM_PATH)
    if python3:
        asked = subprocess.run([python3, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True).stdout.strip()
        assert facts.python_version == asked
    if shutil.which("apt-get", path=SYSTEM_PATH):
        assert facts.pkg_mgr == "apt" and "dpkg" in facts.packages
    assert facts.disk_free_kb > 0 and facts.shm_kb > 0 and facts.init


@pytest.fixture
def deployed(tmp_path, monkeypatch):
    """A deployed host's Triton paths in tmp_path: a live release with its stub, models, history and unit."""
    root, rel_dir = tmp_path / "opt/tritonserver", tmp_path / "opt/tritonfleet/releases"
    for name, attr in ((root, "TRITON_ROOT"), (rel_dir, "RELEASES_DIR"), (tmp_path / "unit", "UNIT_PATH")):
        monkeypatch.setattr(layout, attr, str(name))
    monkeypatch.setattr(releases, "HISTORY_FILE", str(tmp_path / "history"))
    live = rel_dir / "triton-2.51.0-0123456789ab"
    (live / "backends/python").mkdir(parents=True)
    (rel_dir / "triton-2.50.0-ba9876543210").mkdir()  # incomplete: no marker
    (live / layout.RELEASE_MARKER).write_text("sha\n")
    (live / layout.STUB_IN_RELEASE).write_bytes(b"stub for 3.42")
    (live / layout.STUB_IN_RELEASE).chmod(0o750)
    (live / "python_backend_stubs/3.42").mkdir(parents=True)
    (live / "python_backend_stubs/3.42" / layout.STUB_NAME).write_bytes(b"stub for 3.42")
    root.symlink_to(live)
    store = tmp_path / "models-releases/9a1b2c3d4e5f6a7b"
    (store / "add_sub/1").mkdir(parents=True)
    (store / "add_sub/config.pbtxt").write_text('backend: "python"\n')
    (tmp_path / "models").symlink_to(store)
    (tmp_path / "history").write_text("triton-2.51.0-0123456789ab 9a1b2c3d4e5f6a7b 2024-11-25T15:08:24Z")
    (tmp_path / "unit").write_text("[Service]\nExecStart=/opt/tritonserver/bin/tritonserver\n")
    # python3 -> python3.42 (never started), and systemd answering for a server that runs
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3.42").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "python3.42").chmod(0o755)
    (bin_dir / "python3").symlink_to("python3.42")
    server = subprocess.Popen(["sh", "-c", "sleep 60", "tritonserver", "--model-control-mode=poll"])
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\nprintf 'ActiveState=active\\nMainPID={server.pid}\\n'\n")
    (bin_dir / "systemctl").chmod(0o755)
    yield SimpleNamespace(tmp=tmp_path, path=f"{bin_dir}:{SYSTEM_PATH}")
    server.kill()
    server.wait()


def test_facts_of_a_deployed_host(deployed):
    facts = parse_facts(run_facts("root", str(deployed.tmp / "models"), deployed.path))
    assert facts.python_version == "3.42" and facts.user_exists
    assert facts.live_release.endswith("/releases/triton-2.51.0-0123456789ab") and not facts.root_is_unmanaged
    assert facts.releases == ["triton-2.51.0-0123456789ab"]
    assert facts.live_stub == f"{pwd.getpwuid(os.getuid()).pw_name} 750 same"
    assert facts.live_models == str(deployed.tmp / "models-releases/9a1b2c3d4e5f6a7b")
    assert re.fullmatch(r"[0-9a-f]{64}", facts.live_models_manifest) and not facts.models_is_unmanaged
    assert facts.model_repos == ["9a1b2c3d4e5f6a7b"]
    assert [r.id for r in facts.history] == ["triton-2.51.0-0123456789ab+9a1b2c3d4e5f"]  # no final newline
    assert facts.unit_sha256 == hashlib.sha256((deployed.tmp / "unit").read_bytes()).hexdigest()
    assert facts.service["ActiveState"] == "active" and facts.server_mode == "poll"


def test_facts_of_folders_tritonfleet_did_not_make(deployed):
    (deployed.tmp / "opt/tritonserver").unlink()
    (deployed.tmp / "opt/tritonserver").mkdir()
    (deployed.tmp / "models").unlink()
    (deployed.tmp / "models").mkdir()
    facts = parse_facts(run_facts("nosuchuser-tf", str(deployed.tmp / "models"), deployed.path))
    assert facts.root_is_unmanaged and facts.models_is_unmanaged
    assert facts.live_release == "" and facts.live_models == "" and not facts.user_exists
