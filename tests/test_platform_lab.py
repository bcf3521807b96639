"""A fleet of three Debian releases in one run, on lab hosts: gpu08 (Debian 12), gpu09 (Debian 11: glibc 2.31),
gpu10 (Debian 13: Python 3.13, numpy 2.2). The platform preflight lets the Debian 12 host deploy and refuses the
others before anything changes on them. Then each refused host is forced past the preflight (`--skip-tags
preflight`, as a user who overrides the check would) and must break as the preflight said, and `invoke doctor` must
name the cause from the broken host. The last test gives gpu08 a tritonserver built for another architecture.
"""

from __future__ import annotations

import json
import struct
import subprocess

import pytest

from labkit import (ADDRESSES, ensure_mine, fault_log, invoke, on_host, report_of, show, wait_for,  # noqa: F401
                    write_inventory)
from tritonfleet import lab as labmod
from tritonfleet.triton import layout
from tritonfleet.triton.endpoint import Endpoint
from tritonfleet.triton.server import ServerClient

pytestmark = pytest.mark.lab

FLEET = ("gpu08", "gpu09", "gpu10")
AREA = "mixed fleets"
STUB = layout.STUB_PATH


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    ensure_mine(FLEET)
    for name in FLEET:
        lab.reset(name)
    # a short readiness wait: the forced hosts' servers never get ready, and the test should not wait 180 s for it
    yield write_inventory(tmp_path_factory.mktemp("mixed") / "hosts.yml", {name: {} for name in FLEET},
                          lab_vars={"triton_ready_timeout": 20})
    lab.reset("gpu08")  # its tritonserver was replaced by a foreign binary: other suites share this host


def run(*args, inventory: str, timeout: int = 900):
    proc = invoke(*args, "--inventory", inventory, "--json", timeout=timeout)
    return proc, report_of(proc)


def host_report(report: dict, name: str) -> dict:
    return next(h for h in report["hosts"] if h["host"] == name)


def failed_step(host: dict) -> dict:
    return next(s for s in host["steps"] if s["status"] == "failed")


def untouched(name: str) -> list[str]:
    """What a refused host must not have: anything tritonfleet would have made."""
    made = on_host(name, "id triton >/dev/null 2>&1 && echo user; for p in /opt/tritonfleet /opt/tritonserver "
                         f"{layout.UNIT_PATH} /srv/tritonfleet /etc/tritonfleet; do [ -e $p ] && echo $p; done; true")
    return made.split()


def doctor(name: str, inventory: str) -> dict:
    proc, report = run("doctor", "--host", name, inventory=inventory, timeout=600)
    assert report is not None, show(proc)
    assert proc.returncode == 1, show(proc)  # a host with an error
    return report["hosts"][0]["diagnosis"]


def signatures_of(diagnosis: dict) -> dict:
    return {f["signature"]: f for f in diagnosis["findings"] if f["severity"] == "error" and f["signature"]}


@pytest.fixture(scope="module")
def mixed_deploy(inventory):
    """One deploy over the three releases (gpu08 then serves for the last test)."""
    return run("deploy", "--host", ",".join(FLEET), inventory=inventory)


def test_a_mixed_fleet_deploys_debian12_and_refuses_debian11_and_13_untouched(mixed_deploy, fault_log):
    proc, report = mixed_deploy
    assert proc.returncode == 1, show(proc)  # a host failed
    good, old, new = (host_report(report, name) for name in FLEET)

    assert good["failed"] == 0 and not good["unreachable"], show(proc)
    smoke = next(s for s in good["steps"] if s["module"] == "smoke")
    assert smoke["status"] in ("ok", "changed") and all(a["ok"] for a in smoke["data"]["smoke"].values())

    for refused in (old, new):
        step = failed_step(refused)
        assert step["module"] == "triton_preflight", refused["steps"]
        assert [s["module"] for s in refused["steps"]] == ["triton_preflight"]  # nothing ran after it
    old_msg, new_msg = failed_step(old)["msg"], failed_step(new)["msg"]
    assert "the host's glibc is 2.31 but bundle triton-2.51.0-" in old_msg and "needs GLIBC_2.35" in old_msg
    assert "GLIBCXX_3.4.28" in old_msg and "needs GLIBCXX_3.4.30" in old_msg
    assert "the host's python3 is 3.13, for which numpy exists only as 2.x" in new_msg  # none installed yet
    assert "built before numpy 2 support" in new_msg
    assert "libpython3-419a3a08.13.so.1.0" in new_msg and "patchelf --replace-needed" in new_msg
    assert "glibc" not in new_msg  # Debian 13's glibc 2.41 is new enough
    for name in ("gpu09", "gpu10"):
        assert untouched(name) == [], f"{name} was changed although refused"
    assert "gpu09" in proc.stderr and "gpu10" in proc.stderr  # the recap names them
    fault_log(AREA, "one run over Debian 11, 12 and 13 lab hosts (glibc 2.31; Python 3.13 with numpy 2.2)",
              "the Debian 12 host deploys and answers; Debian 11 refused naming glibc 2.31 < GLIBC_2.35 and "
              "GLIBCXX_3.4.28 < 3.4.30, Debian 13 refused naming numpy 2 with a pre-2.52 Python backend and the "
              "vendored libpython (patchelf fix); both untouched (no user, no /opt/tritonfleet), exit 1")


def test_debian11_forced_past_the_preflight_fails_on_glibc_and_the_doctor_names_it(inventory, fault_log):
    proc, report = run("deploy", "--host", "gpu09", "--skip-tags", "preflight", inventory=inventory)
    assert proc.returncode == 1, show(proc)
    step = failed_step(report["hosts"][0])
    assert step["module"] == "wait_ready", step
    assert "GLIBC_2.3" in step["msg"] and "not found" in step["msg"]  # the deploy's own diagnosis
    found = signatures_of(doctor("gpu09", inventory))
    assert "glibc_too_old" in found, found
    assert any("version `GLIBC_2.3" in e and "not found" in e for e in found["glibc_too_old"]["evidence"])
    fault_log(AREA, "Debian 11 host deployed with `--skip-tags preflight` (tritonserver needs a newer glibc)",
              "the server never starts: the deploy fails at readiness and `invoke doctor` names `GLIBC_2.NN not "
              "found` from the journal, with the fix")


@pytest.fixture(scope="module")
def forced_debian13(inventory):
    proc, report = run("deploy", "--host", "gpu10", "--skip-tags", "preflight", inventory=inventory)
    assert proc.returncode == 1, show(proc)
    return report


def test_debian13_forced_past_the_preflight_loses_its_stdlib_and_the_doctor_names_the_vendored_libpython(
        inventory, forced_debian13, fault_log):
    step = failed_step(forced_debian13["hosts"][0])
    assert step["module"] == "wait_ready", step
    # the host's python3 imports numpy 2.2; the stub's vendored libpython does not find it (nor `_struct`)
    assert "No module named 'numpy'" in json.dumps(step["data"]), step
    found = signatures_of(doctor("gpu10", inventory))
    vendored = found["stub_vendored_libpython"]
    assert any("libpython3-419a3a08.13.so.1.0 => /" in e for e in vendored["evidence"])
    assert any("No module named 'numpy'" in e for e in vendored["evidence"])  # folded in: not a package to add
    assert "stub_python_mismatch" not in found and "numpy_missing" not in found
    assert "numpy2_empty_outputs" in found  # numpy 2.2 with Triton 2.51: the next failure, named already
    fault_log(AREA, "Debian 13 host deployed with `--skip-tags preflight` (the 3.13 stub links a vendored libpython)",
              "every Python model UNAVAILABLE with `No module named 'numpy'` although the host's python3 has it; "
              "`invoke doctor` names the vendored "
              "libpython from the stub's ldd (not a missing package) and the numpy 2 mismatch")


def test_debian13_with_the_stub_relinked_loads_but_every_answer_fails_and_the_doctor_names_numpy2(
        inventory, forced_debian13, tmp_path, fault_log):
    # the fix the doctor gives for the stub, done as a user would: patchelf on the control machine, ldd on the host
    local = tmp_path / "stub"
    scp = ["scp", "-i", str(labmod.LAB_KEY), "-o", f"UserKnownHostsFile={labmod.KNOWN_HOSTS}",
           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
    remote = f"root@{ADDRESSES['gpu10']}:{STUB}"
    subprocess.run([*scp, remote, str(local)], check=True, timeout=120)
    subprocess.run(["patchelf", "--replace-needed", "libpython3-419a3a08.13.so.1.0", "libpython3.13.so.1.0",
                    str(local)], check=True, timeout=60)
    subprocess.run([*scp, str(local), remote], check=True, timeout=120)
    on_host("gpu10", f"chown triton:triton {STUB} && chmod 0755 {STUB}")
    ldd = on_host("gpu10", f"LD_LIBRARY_PATH={layout.LIB_DIR} ldd {STUB}")
    assert "libpython3.13.so.1.0 => /" in ldd and "419a3a08" not in ldd
    on_host("gpu10", "systemctl reset-failed tritonserver; systemctl restart tritonserver")
    ready, _ = ServerClient(Endpoint(ADDRESSES["gpu10"], 8000, 8001)).wait_ready(timeout_s=120)
    assert ready, "gpu10: not every model READY with the relinked stub"

    proc, report = run("smoke", "--host", "gpu10", inventory=inventory)
    assert proc.returncode == 1, show(proc)
    step = failed_step(report["hosts"][0])
    assert "output tensor shape does not match size of output" in step["msg"] or \
        "cannot reshape array of size 0" in step["msg"], step["msg"][-2000:]
    assert "numpy" in step["msg"] and "2.52" in step["msg"]  # named with its cause, not only the error
    found = signatures_of(doctor("gpu10", inventory))
    assert set(found) >= {"numpy2_empty_outputs"} and "stub_vendored_libpython" not in found, found
    assert any("numpy_version=2." in e for e in found["numpy2_empty_outputs"]["evidence"])
    fault_log(AREA, "Debian 13 host with the 3.13 stub relinked to the host's libpython (patchelf), numpy 2.2",
              "every model loads READY and every inference fails (`output tensor shape does not match size of "
              "output`); the smoke test fails naming numpy 2 with a pre-2.52 Python backend, and so does "
              "`invoke doctor`")


def aarch64_elf_header() -> bytes:
    """The first bytes of an ELF executable for aarch64 (e_machine 183): enough for the kernel to refuse it.
    Hand-made here: the lab cannot run a real aarch64 tritonserver, and the kernel reads no further."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, ELF version 1, System V
    header = struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, 0x400000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, 120, 120, 0x1000)
    return ident + header + load


def test_a_tritonserver_for_another_architecture_is_named_exec_format_error(inventory, mixed_deploy, tmp_path,
                                                                            fault_log):
    """gpu08 serves (the mixed deploy); its tritonserver binary is replaced by one built for aarch64, as on a host whose
    bundle was made from the wrong tree."""
    binary = tmp_path / "tritonserver"
    binary.write_bytes(aarch64_elf_header())
    with binary.open("rb") as fh:
        subprocess.run(["ssh", "-i", str(labmod.LAB_KEY), "-o", f"UserKnownHostsFile={labmod.KNOWN_HOSTS}",
                        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{ADDRESSES['gpu08']}",
                        f"cat > {layout.SERVER_BINARY}.new && chmod 0755 {layout.SERVER_BINARY}.new && "
                        f"mv {layout.SERVER_BINARY}.new {layout.SERVER_BINARY} && "
                        "(systemctl restart tritonserver || true)"],
                       stdin=fh, check=True, timeout=60)
    wait_for(lambda: "Exec format error" in on_host("gpu08", "journalctl -u tritonserver -o cat -n 50"), 30,
             what="systemd's exec error on gpu08")
    found = signatures_of(doctor("gpu08", inventory))
    assert "exec_format_error" in found, found
    assert any("Exec format error" in e for e in found["exec_format_error"]["evidence"])
    fault_log(AREA, "tritonserver built for another architecture (an aarch64 ELF on an x86_64 host)",
              "systemd cannot start it; `invoke doctor` names `Exec format error` with the fix (a bundle for the "
              "host's architecture); the preflight refuses such a bundle from the host's facts before a deploy")
