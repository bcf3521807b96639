"""The generic host probes (tritonfleet/engine/evidence.py) and the doctor's evidence script built from them.

Parsers run over recorded and hand-written outputs (tests/fixtures/hosts/README.md says which is which);
fragments run under the real `sh` with stand-in tools on PATH. No host, no network, nothing written outside
tmp_path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tritonfleet.engine import evidence
from tritonfleet.engine.evidence import Gpu
from tritonfleet.triton import doctor
from tritonfleet.triton import layout

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"
NVIDIA_SMI = Path(__file__).parent / "fixtures" / "nvidia-smi"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def run_sh(script: str, path: str = SYSTEM_PATH) -> str:
    res = subprocess.run(["/bin/sh", "-c", script], env={"PATH": path}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def tool(bin_dir: Path, name: str, body: str) -> None:
    """A stand-in for a host tool: a sh script printing what the real one would."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\n" + body)
    (bin_dir / name).chmod(0o755)


def tools_only(bin_dir: Path, *names: str) -> str:
    """A PATH with only `bin_dir` holding these real tools (and whatever stand-ins it already has)."""
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        (bin_dir / name).symlink_to(shutil.which(name, path=SYSTEM_PATH))
    return str(bin_dir)


# ---- the output protocol -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,values,sections", [
    ("a=1\nb= two \na=3\n", {"a": ["1", "3"], "b": ["two"]}, {}),
    ("no equals sign\nk=v=w\n", {"k": ["v=w"]}, {}),
    ("@@begin s\nx=1\n  kept  \n\n@@end\nk=v\n", {"k": ["v"]}, {"s": "x=1\n  kept  "}),
    ("@@begin empty\n\n@@end\n", {}, {"empty": ""}),
    ("k=v\n@@begin cut off by a timeout\npartial\n", {"k": ["v"]}, {}),
])
def test_output_keeps_repeated_values_and_sections(text, values, sections):
    out = evidence.parse_output(text)
    assert (out.values, out.sections) == (values, sections)


def test_output_value_is_the_last_one():
    out = evidence.parse_output("a=1\na=2\n")
    assert out.value("a") == "2" and out.value("missing") == "" and out.every("a") == ["1", "2"]


# ---- parsers -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,gpus", [
    ("", []),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", []),
    ("No devices were found", []),
    ("0, NVIDIA A100, 470.82.01", [Gpu(0, "NVIDIA A100", "470.82.01", 0)]),  # memory not asked for
    ("0, NVIDIA A100, 470.82.01, 40960", [Gpu(0, "NVIDIA A100", "470.82.01", 40960)]),  # headerless: the old order
])
def test_gpus_skip_lines_that_are_no_gpu(text, gpus):
    assert evidence.parse_gpus(text) == gpus


@pytest.mark.parametrize("lines,disk_free_kb,shm_kb,shm_free_kb", [
    ("disk_free_kb=52428800\nshm_kb=32768000 32505856", 52428800, 32768000, 32505856),
    ("disk_free_kb=0\nshm_kb=512 0", 0, 512, 0),  # full: 0 is a measurement, not "unknown"
    ("shm_kb=512", None, 512, None),
    ("", None, None, None),  # no /opt, no /dev/shm
])
def test_disks(lines, disk_free_kb, shm_kb, shm_free_kb):
    host = evidence.parse_host(evidence.parse_output(lines))
    assert (host.disk_free_kb, host.shm_kb, host.shm_free_kb) == (disk_free_kb, shm_kb, shm_free_kb)


def test_host_packages_drop_the_architecture_and_service_keeps_every_property():
    host = evidence.parse_host(evidence.parse_output(
        "package=libpython3.11:amd64\npackage=rsync\nservice_MainPID=0\nservice_Description=a=b\n"))
    assert host.packages == {"libpython3.11", "rsync"}
    assert host.service == {"MainPID": "0", "Description": "a=b"}


# ---- fragments under the real sh ---------------------------------------------------------------------------------

def test_python_version_comes_from_the_link_name_without_starting_python(tmp_path):
    bin_dir = tmp_path / "bin"
    tool(bin_dir, "python3.42", "echo 9.9\n")  # would say 9.9 if it were started
    (bin_dir / "python3").symlink_to("python3.42")
    path = tools_only(bin_dir, "readlink")
    assert "python_version=3.42\n" in run_sh(evidence.PYTHON_VERSION, path)


def test_python_version_asks_a_python3_that_is_not_a_versioned_link(tmp_path):
    bin_dir = tmp_path / "bin"
    tool(bin_dir, "python3", 'case "$*" in *-I*-S*) echo 3.13 ;; esac\n')
    path = tools_only(bin_dir, "readlink")
    assert "python_version=3.13\n" in run_sh(evidence.PYTHON_VERSION, path)


def test_no_python3(tmp_path):
    path = tools_only(tmp_path / "bin", "readlink")
    assert "python_version=\n" in run_sh(evidence.PYTHON_VERSION, path)


@pytest.mark.parametrize("present,pkg_mgr", [(["apt-get", "dnf"], "apt"), (["yum", "zypper"], "yum"),
                                             (["zypper"], "zypper"), ([], None)])
def test_package_manager(tmp_path, present, pkg_mgr):
    for name in present:
        tool(tmp_path / "bin", name, "")
    out = evidence.parse_output(run_sh(evidence.PKG_MGR + "true\n", tools_only(tmp_path / "bin")))
    assert out.values.get("pkg_mgr") == ([pkg_mgr] if pkg_mgr else None)


# what dpkg-query prints for the fragment's format: ${db:Status-Abbrev} is three characters ("ii ", "rc ")
DPKG_LIST = ("ii libpython3.11 amd64 3.11.2-6+deb12u2\nrc  rsync amd64 3.2.7-1\nii python3-numpy amd64 1:1.24.2-1\n"
             "ii libc6 amd64 2.36-9+deb12u7\nii libc6 i386 2.36-9+deb12u7\nii libc6-dev amd64 2.36-9+deb12u7\n"
             "ii name-with-*-glob all 1\n")


def test_installed_packages_from_dpkg_keep_only_installed_ones_and_read_the_c_library(tmp_path):
    tool(tmp_path / "bin", "dpkg-query", f"cat <<'EOF'\n{DPKG_LIST}EOF\n")
    host = evidence.parse_host(evidence.parse_output(run_sh(evidence.INSTALLED_PACKAGES,
                                                            tools_only(tmp_path / "bin", "cat"))))
    assert host.packages == {"libpython3.11", "python3-numpy", "libc6", "libc6-dev", "name-with-*-glob"}
    assert (host.glibc_version, host.architectures) == ("2.36", ["x86_64", "i686"])


def test_installed_packages_from_rpm(tmp_path):
    tool(tmp_path / "bin", "rpm", "printf 'ii python3-libs x86_64 3.9.18\\nii rsync x86_64 3.2.3\\n"
                                  "ii glibc x86_64 2.34\\nii glibc-common x86_64 2.34\\n'\n")
    host = evidence.parse_host(evidence.parse_output(run_sh(evidence.INSTALLED_PACKAGES,
                                                            tools_only(tmp_path / "bin"))))
    assert host.packages == {"python3-libs", "rsync", "glibc", "glibc-common"}
    assert (host.glibc_version, host.architectures) == ("2.34", ["x86_64"])


def test_neither_dpkg_nor_rpm_leaves_the_c_library_unknown_and_the_shell_as_it_was(tmp_path):
    out = run_sh(evidence.INSTALLED_PACKAGES + 'set -- a*; echo "glob=$1"; x="1 2"; set -- $x; echo "words=$#"\n',
                 tools_only(tmp_path / "bin"))
    host = evidence.parse_host(evidence.parse_output(out))
    assert (host.packages, host.glibc_version, host.architectures) == (set(), "", [])
    assert "words=2" in out  # IFS and globbing are back to normal for the fragments after it


def under(tmp_path: Path, fragment: str) -> str:
    """A fragment whose absolute /usr paths point into tmp_path."""
    return fragment.replace(" /usr/", f" {tmp_path}/usr/")


def test_libstdcxx_file_name_gives_the_newest_glibcxx(tmp_path):
    for rel in ("usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30", "usr/lib/i386-linux-gnu/libstdc++.so.6.0.28",
                "usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30-gdb.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    out = run_sh(under(tmp_path, evidence.LIBSTDCXX))
    assert evidence.parse_host(evidence.parse_output(out)).glibcxx_version == "3.4.30"


@pytest.mark.parametrize("folders,version", [
    (["usr/lib/python3/dist-packages/numpy-1.24.2.egg-info"], "1.24.2"),
    (["usr/lib/python3/dist-packages/numpy-2.2.4.dist-info",  # pip's /usr/local comes first on sys.path
      "usr/local/lib/python3.11/dist-packages/numpy-1.26.4.dist-info"], "1.26.4"),
    (["usr/lib64/python3.11/site-packages/numpy-1.24.2-py3.11.egg-info"], "1.24.2"),
    (["usr/lib/python3.10/dist-packages/numpy-1.21.5.dist-info"], ""),  # another Python's folder
    ([], ""),
])
def test_numpy_version_from_its_metadata_folder_without_starting_python(tmp_path, folders, version):
    for rel in folders:
        (tmp_path / rel).mkdir(parents=True)
    out = run_sh("python_version=3.11\n" + under(tmp_path, evidence.NUMPY))
    assert evidence.parse_host(evidence.parse_output(out)).numpy_version == version


def test_gpus_section_holds_nvidia_smi_csv(tmp_path):
    csv = (NVIDIA_SMI / "handwritten-four-gpus.csv").read_text()
    tool(tmp_path / "bin", "nvidia-smi", f"cat <<'EOF'\n{csv}EOF\n")
    out = run_sh(evidence.script(evidence.gpus()), tools_only(tmp_path / "bin", "cat"))
    assert len(evidence.parse_host(evidence.parse_output(out)).gpus) == 4
    assert "timeout 20 nvidia-smi" in evidence.gpus(timeout_s=20)


def test_no_nvidia_smi_no_gpus_section(tmp_path):
    assert "@@begin" not in run_sh(evidence.script(evidence.gpus()), tools_only(tmp_path / "bin"))


def test_disks_of_this_machine():
    host = evidence.parse_host(evidence.parse_output(run_sh(evidence.DISKS)))
    assert host.disk_free_kb is not None and host.shm_kb and host.shm_free_kb is not None


def test_missing_os_release_does_not_stop_the_script(tmp_path):
    fragment = evidence.OS_RELEASE.replace("/etc/os-release", str(tmp_path / "none"))
    assert run_sh(fragment + "echo after=yes\n").splitlines() == [
        "os_id=unknown", "os_version=unknown", "os_name=unknown", "after=yes"]


SYSTEMCTL_SHOW = """\
ActiveState=active
MainPID=4242
User=triton
Description=NVIDIA Triton=Server
ActiveEnterTimestamp={since}
"""


def unit_output(tmp_path: Path, since: str) -> str:
    tool(tmp_path / "bin", "systemctl", f"cat <<'EOF'\n{SYSTEMCTL_SHOW.format(since=since)}EOF\n")
    fragment = evidence.systemd_unit("tritonserver", ("ActiveState", "MainPID", "User", "ActiveEnterTimestamp"))
    return run_sh(fragment + 'echo "pid=$main_pid user=$unit_user"\n', f"{tmp_path / 'bin'}:{SYSTEM_PATH}")


def test_systemd_unit_one_call_properties_and_uptime(tmp_path):
    since = subprocess.run(["date", "-d", "-90 seconds"], capture_output=True, text=True).stdout.strip()
    out = unit_output(tmp_path, since)
    service = evidence.parse_host(evidence.parse_output(out)).service
    assert service.pop("UptimeSeconds") in {"89", "90", "91", "92"}
    assert service == {"ActiveState": "active", "MainPID": "4242", "User": "triton",
                       "Description": "NVIDIA Triton=Server"}
    assert out.splitlines()[-1] == "pid=4242 user=triton"  # left for the fragments after it


def test_systemd_unit_survives_a_timestamp_date_cannot_read(tmp_path):
    out = unit_output(tmp_path, "n/a")
    assert "UptimeSeconds" not in out and out.splitlines()[-1] == "pid=4242 user=triton"


def test_systemd_unit_without_systemd(tmp_path):
    path = tools_only(tmp_path / "bin")  # no systemctl at all
    fragment = evidence.systemd_unit("tritonserver", ("ActiveState", "MainPID"))
    assert run_sh(fragment + 'echo "pid=$main_pid"\n', path) == "pid=\n"


def test_command_quotes_env_and_script():
    cmd = evidence.command("echo \"$A\" 'x'\n", {"A": "it's here"})
    assert run_sh(cmd) == "it's here x\n"


# ---- the doctor's evidence script --------------------------------------------------------------------------------

def doctor_command() -> str:
    return doctor.evidence_command(dict(layout.DEFAULT_VARS))


def test_doctor_script_is_valid_sh_and_probes_each_thing_once():
    assert subprocess.run(["sh", "-n", "-c", doctor_command()], capture_output=True).returncode == 0
    script = doctor._SCRIPT
    assert script.count("systemctl show") == 1 and script.count("df -Pk") == 1
    # nvidia-smi is asked once, and once more only by drivers that refuse compute_cap (before R510)
    assert script.count("nvidia-smi --query-gpu") == 2 and "python3 -c 'import sys" not in script


def test_doctor_script_runs_here_to_its_end():
    ev = doctor.parse_evidence(run_sh(doctor_command()))
    assert re.fullmatch(r"3\.\d+", ev.host.python_version)
    assert ev.host.disk_free_kb is not None and ev.host.shm_kb
    assert ev.values["repo"] == layout.DEFAULT_VARS["triton_model_repository_path"]
    assert {"cmdline", "unit", "ldd", "numpy", "ss", "journal", "repo_listing"} <= set(ev.sections)


def handwritten_restarting_host() -> doctor.Diagnosis:
    ev = doctor.parse_evidence((FIXTURES / "handwritten-gpu-restarting.doctor.txt").read_text())
    c = doctor._Context(ev, dict(layout.DEFAULT_VARS), "192.0.2.1", "gpu01")
    d = doctor.Diagnosis("gpu01")
    for check in doctor.CHECKS:
        check(c, d)
    d._context = c
    return d


def test_doctor_evidence_of_a_handwritten_gpu_host():
    ev = doctor.parse_evidence((FIXTURES / "handwritten-gpu-restarting.doctor.txt").read_text())
    assert ev.host.python_version == "3.10" and ev.host.pkg_mgr == "apt"
    assert ev.host.gpus == [Gpu(0, "NVIDIA A100-SXM4-40GB", "470.82.01", 40960,
                                "GPU-1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f")]
    assert (ev.host.disk_free_kb, ev.host.shm_kb) == (1048576, None)
    assert ev.service["NRestarts"] == "7" and ev.service is ev.host.service
    assert "bin/tritonserver" in ev.files and "add_sub" in ev.configs and "gpus" in ev.sections
    d = handwritten_restarting_host()
    assert {f.signature for f in d.errors} >= {"libpython_missing", "numpy_missing", "cuda_driver_insufficient"}
    titles = {f.title for f in d.findings}
    assert "/dev/shm is not mounted" in titles and "only 1024 MiB free in /opt" in titles
    fixes = {f.signature: f.fix for f in d.findings}
    assert fixes["libpython_missing"] == "install libpython3.10" and fixes["numpy_missing"] == "install python3-numpy"


class RecordingConn:
    """Records the commands a fix runs; every one succeeds."""

    def __init__(self):
        self.commands = []

    def run(self, command, **kw):
        self.commands.append(command)
        return SimpleNamespace(ok=True, stdout="", stderr="")


def test_doctor_fix_installs_packages_by_role():
    d = handwritten_restarting_host()
    conn = RecordingConn()
    done = doctor._install_missing_packages(conn, d._context, d, progress=lambda msg: None)
    assert done == ["installed libpython3.10, python3-numpy"]
    assert conn.commands[0].endswith("apt-get install -y -qq --no-install-recommends libpython3.10 python3-numpy")


def test_doctor_fix_names_a_missing_package_manager():
    d = handwritten_restarting_host()
    d._context.ev.host.pkg_mgr = "pacman"
    done = doctor._install_missing_packages(RecordingConn(), d._context, d, progress=lambda msg: None)
    assert done == ["cannot install the missing packages: no known package manager (found 'pacman')"]


def recorded_diagnosis(name: str) -> doctor.Diagnosis:
    """The doctor's checks over a recorded evidence file, with the server's index as the live run saw it absent (the
    checks that need no server)."""
    ev = doctor.parse_evidence((FIXTURES / name).read_text())
    c = doctor._Context(ev, dict(layout.DEFAULT_VARS), "10.213.0.20", "gpu10")
    d = doctor.Diagnosis("gpu10")
    for check in doctor.CHECKS:
        check(c, d)
    doctor._fold_misread_findings(d)
    return d


def test_doctor_names_a_vendored_libpython_not_a_missing_package_on_a_debian13_lab_host():
    d = recorded_diagnosis("recorded-debian13-lab-vendored-libpython.doctor.txt")
    errors = {f.signature: f for f in d.errors}
    vendored = errors["stub_vendored_libpython"]
    assert vendored.title == ("the stub links libpython3-419a3a08.13.so.1.0, a libpython from the bundle's lib/, not "
                              "the host's libpython3.13.so.1.0")
    assert any("No module named 'numpy'" in e for e in vendored.evidence)  # the journal's lines, folded in
    assert "numpy_missing" not in errors and "stub_python_mismatch" not in errors
    assert "numpy2_empty_outputs" in errors


def test_doctor_names_numpy2_with_a_pre_2_52_python_backend_on_a_debian13_lab_host():
    d = recorded_diagnosis("recorded-debian13-lab-numpy2.doctor.txt")
    f = next(f for f in d.errors if f.signature == "numpy2_empty_outputs")
    assert f.evidence == ["import numpy as triton: numpy_version=2.2.4", "/opt/tritonserver/TRITON_VERSION: 2.51.0"]
    assert "Triton 2.52" in f.fix and "python_backend/pull/384" in f.link
    assert "stub_vendored_libpython" not in {f.signature for f in d.findings}  # relinked: ldd shows the host's


def test_numpy2_is_no_error_with_a_python_backend_that_supports_it():
    text = (FIXTURES / "recorded-debian13-lab-numpy2.doctor.txt").read_text().replace(
        "triton_version=2.51.0", "triton_version=2.52.0")
    ev = doctor.parse_evidence(text)
    c = doctor._Context(ev, dict(layout.DEFAULT_VARS), "10.213.0.20", "gpu10")
    d = doctor.Diagnosis("gpu10")
    doctor.check_numpy(c, d)
    assert d.findings == []


def test_a_tls_file_grpc_cannot_use_is_named_and_tritons_busy_port_line_folded_into_it():
    # the journal lines a local tritonserver 2.51 printed with an unusable --grpc-server-key (2026-11-26); the rest of
    # the evidence is written by hand
    journal = [
        "Started tritonserver.service - Triton Inference Server.",
        "E1126 14:20:34.102594114    5147 ssl_transport_security.cc:780]        Invalid private key.",
        "E1126 14:20:34.102674137    5147 ssl_security_connector.cc:271]        Handshaker factory creation failed "
        "with TSI_INVALID_ARGUMENT.",
        "E1126 14:20:34.106248 5147 main.cc:245] \"failed to start GRPC service: Unavailable - Socket '0.0.0.0:8001' "
        "already in use \"",
    ]
    text = ("python_version=3.11\npkg_mgr=apt\nservice_ActiveState=activating\n"
            "service_Description=tritonserver.service - Triton Inference Server\n"
            "@@begin journal\n" + "\n".join(journal) + "\n@@end\n")
    ev = doctor.parse_evidence(text)
    c = doctor._Context(ev, dict(layout.DEFAULT_VARS), "192.0.2.1", "gpu01")
    d = doctor.Diagnosis("gpu01")
    doctor.check_journal(c, d)
    assert {f.signature for f in d.findings} == {"grpc_tls_unusable", "port_in_use"}
    doctor._fold_misread_findings(d)
    (tls_finding,) = d.findings
    assert tls_finding.signature == "grpc_tls_unusable" and "server/issues/5566" in tls_finding.link
    assert any("already in use" in e for e in tls_finding.evidence)


def test_a_restarting_server_caught_just_after_a_new_start_is_named_from_the_run_before():
    # systemd's lines for a tritonserver it cannot execute (lab host gpu08, 2026-11-26), read just after a restart
    journal = [
        "Started tritonserver.service - Triton Inference Server.",
        "tritonserver.service: Failed to execute /opt/tritonserver/bin/tritonserver: Exec format error",
        "tritonserver.service: Failed at step EXEC spawning /opt/tritonserver/bin/tritonserver: Exec format error",
        "tritonserver.service: Main process exited, code=exited, status=203/EXEC",
        "tritonserver.service: Scheduled restart job, restart counter is at 7.",
        "Stopped tritonserver.service - Triton Inference Server.",
        "Started tritonserver.service - Triton Inference Server.",
    ]
    text = ("python_version=3.11\npkg_mgr=apt\nservice_ActiveState=active\nservice_NRestarts={n}\n"
            "service_Description=tritonserver.service - Triton Inference Server\n"
            "@@begin journal\n" + "\n".join(journal) + "\n@@end\n")
    for restarts, named in (("7", {"exec_format_error"}), ("0", set())):
        ev = doctor.parse_evidence(text.format(n=restarts))
        d = doctor.Diagnosis("gpu08")
        doctor.check_journal(doctor._Context(ev, dict(layout.DEFAULT_VARS), "192.0.2.1", "gpu08"), d)
        assert {f.signature for f in d.findings} == named, restarts  # a server started once: only its own run
