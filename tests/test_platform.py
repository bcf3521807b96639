"""What a host must have to run the bundle: read from the bundle's ELF files when it is built (bundle.Platform), from
the host by the facts script, and compared by the preflight before anything on the host changes.

Hermetic: ELF files are built here, byte by byte; host outputs are the fixtures in tests/fixtures/hosts/ (its
README says which are recordings). The one `server` test reads the real pinned bundle from the cache.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import pytest

from tritonfleet.engine.inventory import Host
from tritonfleet.engine.runner import run_module
from tritonfleet.engine.spec import HostContext
from tritonfleet.fleet.run import host_vars
from tritonfleet.modules import MODULES
from tritonfleet.triton import bundle as bmod
from tritonfleet.triton import layout
from tritonfleet.triton.bundle import Bundle, Platform, platform_of
from tritonfleet.triton.facts import parse_facts
from tritonfleet.triton.models import Repository

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
STUB = "triton_python_backend_stub"
EM_X86_64, EM_AARCH64 = 62, 183

# What nvidia-pytriton 0.7.0's bundle needs, as build_bundle recorded it in the sidecar (checked against the real
# bundle by test_the_pinned_bundle_records_this_platform).
PINNED = Platform(
    machine="x86_64", glibc="2.35", glibc_by="lib/libpython3-419a3a08.13.so.1.0", glibcxx="3.4.30",
    glibcxx_by="backends/python/libtriton_python.so",
    stub_libpythons=(("3.8", "libpython3.8.so.1.0"), ("3.9", "libpython3.9.so.1.0"), ("3.10", "libpython3.10.so.1.0"),
                     ("3.11", "libpython3.11.so.1.0"), ("3.12", "libpython3.12.so.1.0"),
                     ("3.13", "libpython3-419a3a08.13.so.1.0")),
    numpy2=False)
PINNED_BUNDLE = Bundle(Path("bundle.tar.gz"), "b" * 64, 55230318, "triton-2.51.0-d6c06e72d1c9", "2.51.0",
                       ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13"), ("python",), PINNED)


def tiny_elf(machine: int = EM_X86_64, needed: tuple[str, ...] = (), versions: dict | None = None) -> bytes:
    """A 64-bit little-endian shared object with just what the reader looks at: the header's e_machine, one PT_LOAD
    over the whole file, PT_DYNAMIC with DT_NEEDED / DT_STRTAB / DT_VERNEED, .dynstr and .gnu.version_r."""
    versions = versions or {}
    strings = b"\0"

    def string(text: str) -> int:
        nonlocal strings
        offset = len(strings)
        strings += text.encode() + b"\0"
        return offset
    needed_at = [string(n) for n in needed]
    verneed = b""
    for i, (library, names) in enumerate(versions.items()):
        last = i == len(versions) - 1
        verneed += struct.pack("<HHIII", 1, len(names), string(library), 16,
                               0 if last else 16 + 16 * len(names))
        for j, name in enumerate(names):
            verneed += struct.pack("<IHHII", 0, 0, 0, string(name), 0 if j == len(names) - 1 else 16)
    header_size, phdr_size = 64, 56 * 2
    strtab_at = header_size + phdr_size
    verneed_at = strtab_at + len(strings)
    dynamic_at = verneed_at + len(verneed)
    tags = [(1, n) for n in needed_at] + [(5, strtab_at)]
    if versions:
        tags += [(0x6FFFFFFE, verneed_at), (0x6FFFFFFF, len(versions))]
    dynamic = b"".join(struct.pack("<qQ", tag, value) for tag, value in tags + [(0, 0)])
    size = dynamic_at + len(dynamic)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, header_size, 0, 0, header_size, 56, 2, 0, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, size, size, 0x1000)
    dyn = struct.pack("<IIQQQQQQ", 2, 6, dynamic_at, dynamic_at, dynamic_at, len(dynamic), len(dynamic), 8)
    return header + load + dyn + strings + verneed + dynamic


GLIBC = "libc.so.6"
TREE = {
    "bin/tritonserver": tiny_elf(needed=("libtritonserver.so", GLIBC),
                                 versions={GLIBC: ["GLIBC_2.2.5", "GLIBC_2.34"], "libstdc++.so.6": ["GLIBCXX_3.4.30"]}),
    "lib/libpython3-419a3a08.13.so.1.0": tiny_elf(versions={"libm.so.6": ["GLIBC_2.29"], GLIBC: ["GLIBC_2.35"]}),
    f"python_backend_stubs/3.11/{STUB}": tiny_elf(needed=("libpython3.11.so.1.0", GLIBC),
                                                  versions={"libstdc++.so.6": ["GLIBCXX_3.4.9", "CXXABI_1.3.13"]}),
    f"python_backend_stubs/3.13/{STUB}": tiny_elf(needed=("libpython3-419a3a08.13.so.1.0", GLIBC)),
    "backends/python/triton_python_backend_utils.py": b"import numpy\n",
}


def files_of(tree: dict) -> list:
    return [(name, lambda data=data: data) for name, data in tree.items()]


# ---- reading the bundle ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("machine,name", [(EM_X86_64, "x86_64"), (EM_AARCH64, "aarch64"), (4242, "EM_4242")])
def test_elf_machine_named_as_uname_names_it(machine, name):
    assert bmod._Elf(tiny_elf(machine), "x").machine == name


def test_elf_version_needs_and_needed_libraries():
    elf = bmod._Elf(TREE["bin/tritonserver"], "bin/tritonserver")
    assert elf.version_needs() == ["GLIBC_2.2.5", "GLIBC_2.34", "GLIBCXX_3.4.30"]
    assert elf.dynamic_strings()["needed"] == ["libtritonserver.so", GLIBC]
    assert bmod._Elf(tiny_elf(), "static").version_needs() == []


def test_platform_of_a_tree_records_the_highest_versions_and_who_needs_them():
    platform = platform_of(files_of(TREE), "2.51.0")
    assert platform == Platform("x86_64", "2.35", "lib/libpython3-419a3a08.13.so.1.0", "3.4.30", "bin/tritonserver",
                                (("3.11", "libpython3.11.so.1.0"), ("3.13", "libpython3-419a3a08.13.so.1.0")), False)
    assert platform.vendored_libpython("3.13") == "libpython3-419a3a08.13.so.1.0"
    assert platform.vendored_libpython("3.11") == "" and platform.vendored_libpython("3.12") == ""
    assert Platform.from_meta(json.loads(json.dumps(platform.as_meta()))) == platform


@pytest.mark.parametrize("triton_version,numpy2", [("2.51.0", False), ("2.52.0", True), ("2.60.1", True)])
def test_numpy2_support_follows_the_triton_version(triton_version, numpy2):
    assert platform_of([], triton_version).numpy2 is numpy2


def write_bundle(folder: Path, tree: dict, sidecar: dict) -> tuple[Path, Path]:
    """A bundle tarball of `tree` and a sidecar as an older tritonfleet wrote it."""
    tar_path = folder / "triton-2.51.0-000000000000.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        for name, data in tree.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    json_path = tar_path.with_name("triton-2.51.0-000000000000.json")
    json_path.write_text(json.dumps({"sha256": "0" * 64, "size": tar_path.stat().st_size,
                                     "bundle_id": "triton-2.51.0-000000000000", "triton_version": "2.51.0",
                                     "python_versions": ["3.11", "3.13"], **sidecar}))
    return tar_path, json_path


def test_a_sidecar_without_the_platform_is_completed_from_the_tarball_once(tmp_path):
    tar_path, json_path = write_bundle(tmp_path, TREE, {"backends": ["python"]})
    assert bmod.load_bundle(tar_path).platform == platform_of(files_of(TREE), "2.51.0")
    assert json.loads(json_path.read_text())["platform"]["glibc"] == "2.35"
    tar_path.write_bytes(b"\0" * tar_path.stat().st_size)  # unreadable now: the sidecar answers
    assert bmod.load_bundle(json_path).platform.glibc_by == "lib/libpython3-419a3a08.13.so.1.0"


def test_a_bundle_that_cannot_be_read_has_an_unknown_platform_and_is_refused_for_its_size(tmp_path):
    tar_path, json_path = write_bundle(tmp_path, TREE, {})
    tar_path.write_bytes(b"not gzip")
    with pytest.raises(bmod.TritonfleetError, match="bytes, its metadata says"):
        bmod.load_bundle(json_path)
    assert "platform" not in json.loads(json_path.read_text())  # asked again once the tarball is back


@pytest.mark.server
def test_the_pinned_bundle_records_this_platform():
    assert bmod.default_bundle(progress=lambda msg: None).platform == PINNED


# ---- the preflight against host facts --------------------------------------------------------------------------

def facts(name: str):
    return parse_facts((HOSTS / name).read_text())


# Each host fixture against the pinned bundle: the start of every platform problem, in order.
@pytest.mark.parametrize("name,problems", [
    ("recorded-debian12-container.facts.txt", []),
    ("handwritten-debian12-fresh.facts.txt", []),
    ("handwritten-debian12-live.facts.txt", []),
    ("recorded-debian11-chroot.facts.txt", [
        "the host's glibc is 2.31 but bundle triton-2.51.0-d6c06e72d1c9 needs GLIBC_2.35 "
        "(lib/libpython3-419a3a08.13.so.1.0)",
        "the host's libstdc++ provides GLIBCXX_3.4.28 but bundle triton-2.51.0-d6c06e72d1c9 needs GLIBCXX_3.4.30"]),
    ("recorded-debian13-chroot.facts.txt", [
        "the host's python3 finds numpy 2.2.4 (/usr/lib/python3/dist-packages/numpy-2.2.4.dist-info) but the Python "
        "backend of bundle triton-2.51.0-d6c06e72d1c9 (Triton 2.51.0) was built before numpy 2 support",
        "bundle triton-2.51.0-d6c06e72d1c9's stub for Python 3.13 links libpython3-419a3a08.13.so.1.0, a libpython "
        "shipped in the bundle's lib/, not the host's libpython3.13.so.1.0"]),
    ("recorded-debian11-lab.facts.txt", [
        "the host's glibc is 2.31 but bundle triton-2.51.0-d6c06e72d1c9 needs GLIBC_2.35",
        "the host's libstdc++ provides GLIBCXX_3.4.28 but bundle triton-2.51.0-d6c06e72d1c9 needs GLIBCXX_3.4.30"]),
    ("recorded-debian13-lab.facts.txt", [  # no numpy yet: Python 3.13 can only get numpy 2
        "the host's python3 is 3.13, for which numpy exists only as 2.x (numpy 1.26, the last 1.x, supports Python "
        "up to 3.12), so the numpy the packages step installs is numpy 2 but the Python backend of bundle "
        "triton-2.51.0-d6c06e72d1c9 (Triton 2.51.0) was built before numpy 2 support",
        "bundle triton-2.51.0-d6c06e72d1c9's stub for Python 3.13 links libpython3-419a3a08.13.so.1.0"]),
    ("handwritten-ubuntu22-aarch64-gh200.facts.txt", [
        "the host's C library is for aarch64 but bundle triton-2.51.0-d6c06e72d1c9 is built for x86_64"]),
    ("handwritten-rocky9-dnf.facts.txt", [
        "the host's glibc is 2.34 but bundle triton-2.51.0-d6c06e72d1c9 needs GLIBC_2.35",
        "the host's libstdc++ provides GLIBCXX_3.4.29 but bundle triton-2.51.0-d6c06e72d1c9 needs GLIBCXX_3.4.30"]),
])
def test_platform_problems_of_each_host(name, problems):
    found = layout.platform_problems(facts(name), PINNED_BUNDLE)
    assert [p[:len(want)] for p, want in zip(found, problems)] == problems and len(found) == len(problems), found


def test_each_refusal_says_what_to_do():
    found = layout.platform_problems(facts("recorded-debian13-chroot.facts.txt"), PINNED_BUNDLE)
    assert "Triton 2.52 or newer tree (`invoke bundle --source DIR`)" in found[0]
    assert ("patchelf --replace-needed libpython3-419a3a08.13.so.1.0 libpython3.13.so.1.0 "
            f"python_backend_stubs/3.13/{STUB}") in found[1]
    arch = layout.platform_problems(facts("handwritten-ubuntu22-aarch64-gh200.facts.txt"), PINNED_BUNDLE)[0]
    assert "'Exec format error'" in arch and "for aarch64 (`invoke bundle --source DIR`" in arch


def test_what_either_side_does_not_know_is_not_checked():
    unknown_host = parse_facts("init=systemd\npython_version=3.13\n")
    assert layout.platform_problems(unknown_host, Bundle(Path("b"), "", 0, "b", "2.51.0", ("3.13",))) == []
    assert [p[:30] for p in layout.platform_problems(unknown_host, PINNED_BUNDLE)] == [
        "the host's python3 is 3.13, fo",  # Python 3.13 alone implies numpy 2
        "bundle triton-2.51.0-d6c06e72d"]  # the stub, which needs no host value but the Python


class NoCommands:
    """A host connection for a module that must not send any command."""

    def __init__(self, host: Host):
        self.host = host

    def run(self, command: str, **kw):
        raise AssertionError(f"the preflight sent a command: {command}")


def preflight(name: str, bundle: Bundle = PINNED_BUNDLE):
    """triton_preflight run as a playbook runs it, on a host with this facts fixture and no models."""
    host = Host("gpu01", {"ansible_host": "192.0.2.1"}, ("lab",))
    ctx = HostContext(host, NoCommands(host), host_vars(host, {}), False, bundle=bundle,
                      repository=Repository(Path("models"), {}, "0" * 64))
    ctx.facts = facts(name)
    return run_module(MODULES["triton_preflight"], ctx, {})


def test_the_preflight_module_refuses_a_debian13_host_before_anything_changes():
    outcome = preflight("recorded-debian13-chroot.facts.txt")
    assert outcome.failed and not outcome.changed
    assert "numpy 2.2.4" in outcome.msg and "libpython3-419a3a08.13.so.1.0" in outcome.msg
    assert "PID 1 is 'process_api', not systemd" in outcome.msg  # the chroot's PID 1 is this machine's


def test_the_preflight_module_passes_a_debian12_host():
    outcome = preflight("handwritten-debian12-live.facts.txt")
    assert outcome.status == "ok", outcome.msg
    assert outcome.msg.startswith("Debian GNU/Linux 12 (bookworm), python 3.11, 2 GPU(s); driver 535.104.05 runs "
                                  "CUDA 12.6 by minor version compatibility")
