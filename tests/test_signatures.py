"""The signature table and the doctor's checks on recorded evidence: no host, no network."""

from __future__ import annotations

import pytest

from tritonfleet.triton import doctor
from tritonfleet.triton import signatures
from tritonfleet.triton import layout
from tritonfleet.triton.signatures import BY_ID, SIGNATURES

# The real lines from docs/notes (triton-on-bare-metal.md) and from the lab's tritonserver 2.51.0, each with the
# signature it must map to. A new row in the table brings its own `example`; these pin the notes' failure tables.
NOTES_LINES = [
    ("failed to load 'M' version 1: Internal: ModuleNotFoundError: No module named 'numpy'", "numpy_missing"),
    ("triton_python_backend_stub: error while loading shared libraries: libpython3.11.so.1.0: cannot open shared "
     "object file", "libpython_missing"),
    ("\tlibpython3.11.so.1.0 => not found", "libpython_missing"),
    ("Internal: Failed to give execute permission to triton_python_backend_stub in /opt/tritonserver/backends/"
     "python/triton_python_backend_stub M Error No.: -1", "stub_permission"),
    ("UNAVAILABLE: Internal: ModuleNotFoundError: No module named 'model'", "backend_dir_trailing_slash"),
    ("error: creating server: Internal - failed to load all models", "exit_on_error"),
    ("tritonserver.service: Start request repeated too quickly.", "restart_loop"),
    ("Unable to initialize shared memory key '/add_sub_0_CPU_0' to requested size (67108864 bytes)", "shm_too_small"),
    ("Failed to increase the shared memory pool size for key 'triton_python_backend_shm_region_1'", "shm_too_small"),
    ("failed to start HTTP service: Unavailable - Socket '0.0.0.0:8000' already in use", "port_in_use"),
    ("failed to start GRPC service: Unavailable - Socket '0.0.0.0:8001' already in use", "port_in_use"),
    ("failed to start Metrics service: Unavailable - Socket '0.0.0.0:8002' already in use", "port_in_use"),
    ("at least one version must be available under the version policy of model 'M'", "missing_version"),
    ("Error parsing text-format inference.ModelConfig: 4:7: Expected identifier, got: {", "bad_config"),
    ("Poll failed for model directory 'M': failed to read text proto from /srv/m/M/config.pbtxt", "bad_config"),
    ("Internal: ModuleNotFoundError: No module named 'torch'", "stub_python_mismatch"),
]


@pytest.mark.parametrize("sig", SIGNATURES, ids=[s.id for s in SIGNATURES])
def test_every_row_matches_its_own_example_and_maps_to_itself(sig):
    assert sig.regex.search(sig.example), f"{sig.id}: pattern does not match its example"
    assert signatures.match(sig.example) is sig
    assert sig.cause and sig.fix and sig.link.startswith("https://")
    assert sig.action in ("", "packages", "chown_stub", "backend_dir", "restart")
    assert sig.severity in doctor.SEVERITIES


@pytest.mark.parametrize("line,sig_id", NOTES_LINES)
def test_notes_failure_lines_map_to_their_cause(line, sig_id):
    assert signatures.match(line).id == sig_id


def test_table_has_every_row_of_the_notes_and_unique_ids():
    assert len(BY_ID) == len(SIGNATURES)
    assert {"numpy_missing", "libpython_missing", "stub_permission", "backend_dir_trailing_slash", "exit_on_error",
            "shm_too_small", "port_in_use", "missing_version", "bad_config", "stub_python_mismatch"} <= set(BY_ID)


def test_harmless_lines_match_nothing():
    for line in ('I1125 15:08:24.196332 307 http_server.cc:4713] "Started HTTPService at 0.0.0.0:8000"',
                 "Started tritonserver.service - NVIDIA Triton Inference Server (tritonfleet).", ""):
        assert signatures.match(line) is None


def test_match_lines_keeps_table_order_and_first_line():
    found = signatures.match_lines(["x No module named 'numpy' first", "No module named 'numpy' second",
                                    "Start request repeated too quickly."])
    assert [(s.id, line) for s, line in found] == [("numpy_missing", "x No module named 'numpy' first"),
                                                    ("restart_loop", "Start request repeated too quickly.")]


def test_readme_troubleshooting_section_is_generated_from_the_table():
    section = signatures.readme_section(signatures.README.read_text())
    assert section == signatures.markdown(), "run: python3 -m tritonfleet.triton.signatures --markdown"
    for sig in SIGNATURES:
        assert sig.link in section


def test_rewrite_readme_replaces_only_the_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{signatures.START}\nSTALE-TEXT\n{signatures.END}\n\n## Libraries chosen\n")
    assert signatures.rewrite_readme(readme)
    text = readme.read_text()
    assert text.startswith("# x\n\n") and text.endswith("\n\n## Libraries chosen\n") and "STALE-TEXT" not in text
    assert not signatures.rewrite_readme(readme)  # idempotent
    fresh = tmp_path / "FRESH.md"
    fresh.write_text("# y\n\n## Libraries chosen\nz\n")
    signatures.rewrite_readme(fresh)
    assert fresh.read_text().index(signatures.START) < fresh.read_text().index("## Libraries chosen")


# ---------------------------------------------------------------------------------------------------------------
# doctor checks on recorded evidence

CONFIG = 'name: "add_sub"\nbackend: "python"\ninstance_group [ { count: 2 kind: KIND_CPU } ]\n'
GOOD_LDD = ("\tlibcudart-09529672.so.12.6.77 => /opt/tritonserver/lib/libcudart-09529672.so.12.6.77 (0x1)\n"
            "\tlibpython3.11.so.1.0 => /lib/x86_64-linux-gnu/libpython3.11.so.1.0 (0x2)")
ARGV = ["/opt/tritonserver/bin/tritonserver", "--model-repository=/srv/tritonfleet/models", "--http-port=8000",
        "--grpc-port=8001", "--metrics-port=8002"]


def evidence(**over) -> str:
    parts = {
        "values": "python_version=3.11\npkg_mgr=apt\nroot_target=/opt/tritonfleet/releases/r1\n"
                  "stub_stat=triton 755\nshm_kb=2468412 2465340\ndisk_free_kb=81111848\nrepo=/srv/tritonfleet/models\n"
                  "file=bin/tritonserver\nfile=backends/python/libtriton_python.so\n"
                  "file=backends/python/triton_python_backend_utils.py\n"
                  "file=backends/python/triton_python_backend_stub\n"
                  "service_LoadState=loaded\nservice_ActiveState=active\nservice_SubState=running\n"
                  "service_NRestarts=0\nservice_User=triton\nservice_Description=NVIDIA Triton\n"
                  "service_FragmentPath=/etc/systemd/system/tritonserver.service\n",
        "cmdline": "\n".join(ARGV),
        "unit": "[Service]\nExecStart=" + " ".join(ARGV),
        "ldd": GOOD_LDD,
        "numpy": "numpy_version=1.24.2",
        "ss": "LISTEN 0 1024 0.0.0.0:8000 0.0.0.0:* users:((\"tritonserver\",pid=307,fd=52))",
        "journal": "old: No module named 'numpy'\nStarted tritonserver.service - NVIDIA Triton\nall good",
        "repo_listing": "d add_sub\nd add_sub/1\nf add_sub/config.pbtxt",
        "config add_sub": CONFIG,
    }
    parts.update(over)
    text = parts.pop("values")
    for name, body in parts.items():
        text += f"@@begin {name}\n{body}\n@@end\n"
    return text


def run_checks(output: str) -> doctor.Diagnosis:
    ev = doctor.parse_evidence(output)
    c = doctor._Context(ev, dict(layout.DEFAULT_VARS), "192.0.2.1", "h1")
    d = doctor.Diagnosis("h1")
    for check in doctor.CHECKS:
        check(c, d)
    return d


def errors(d):
    return {f.signature or f.title for f in d.errors}


def test_healthy_evidence_has_no_errors_and_old_runs_are_history():
    d = run_checks(evidence())
    assert not d.errors, doctor.render(d)
    assert not any(f.signature == "numpy_missing" for f in d.findings)  # before the last "Started" line


def test_shm_too_small_for_the_instances():
    # /dev/shm of 512 KiB (`mount -o remount,size=512k` is refused in the lab's containers): 2 instances x 1 MiB
    d = run_checks(evidence(values=evidence().split("@@begin")[0].replace("shm_kb=2468412 2465340", "shm_kb=512 512")))
    f = next(f for f in d.errors if f.signature == "shm_too_small")
    assert "2 Python model instance(s)" in f.evidence[0] and "512 KiB" in f.evidence[0]


def test_shm_default_byte_size_from_the_flags():
    argv = ARGV + ["--backend-config=python,shm-default-byte-size=3221225472"]
    d = run_checks(evidence(cmdline="\n".join(argv)))
    assert "shm_too_small" in errors(d)


def test_trailing_slash_in_unit_and_process():
    argv = ARGV + ["--backend-directory=/opt/tritonserver/backends/"]
    d = run_checks(evidence(cmdline="\n".join(argv), unit="ExecStart=" + " ".join(argv)))
    f = next(f for f in d.errors if f.signature == "backend_dir_trailing_slash")
    assert f.action == "backend_dir" and len(f.evidence) == 2


def test_unit_file_fix_drops_only_the_trailing_slash():
    unit = "ExecStart=/opt/tritonserver/bin/tritonserver --backend-directory=/opt/tritonserver/backends/ --x=1\n"
    assert doctor._SLASHED_FLAG.sub(lambda m: m.group(1) + m.group(2), unit) == \
        "ExecStart=/opt/tritonserver/bin/tritonserver --backend-directory=/opt/tritonserver/backends --x=1\n"


def test_stub_libpython_missing_mismatch_and_owner():
    d = run_checks(evidence(ldd="\tlibpython3.11.so.1.0 => not found"))
    assert "libpython_missing" in errors(d)
    d = run_checks(evidence(ldd="\tlibpython3.12.so.1.0 => /usr/lib/libpython3.12.so.1.0 (0x1)"))
    assert "stub_python_mismatch" in errors(d)
    d = run_checks(evidence(values=evidence().split("@@begin")[0].replace("stub_stat=triton 755", "stub_stat=root 700")))
    assert next(f for f in d.errors if f.signature == "stub_permission").action == "chown_stub"
    # root-owned but executable by all: works until the backend must chmod it, so a warning
    d = run_checks(evidence(values=evidence().split("@@begin")[0].replace("stub_stat=triton 755", "stub_stat=root 755")))
    assert not d.errors and any(f.signature == "stub_permission" for f in d.findings)


def test_numpy_missing_names_the_package():
    d = run_checks(evidence(numpy="ModuleNotFoundError: No module named 'numpy'"))
    f = next(f for f in d.errors if f.signature == "numpy_missing")
    assert "python3-numpy" in f.fix and f.action == "packages"


def test_port_held_by_another_process():
    d = run_checks(evidence(ss='LISTEN 0 5 0.0.0.0:8000 0.0.0.0:* users:(("python3",pid=99,fd=3))'))
    f = next(f for f in d.errors if f.signature == "port_in_use")
    assert "python3 (pid 99)" in f.title and "8000" in f.title


def test_repository_missing_version_and_bad_config():
    d = run_checks(evidence(repo_listing="d add_sub\nf add_sub/config.pbtxt", **{"config add_sub": "bogus {"}))
    assert {"missing_version", "bad_config"} <= errors(d)


def test_gpu_driver_and_cpu_only_kind_gpu():
    d = run_checks(evidence(gpus="0, NVIDIA A100, 470.82.01"))
    assert "cuda_driver_insufficient" in errors(d)
    assert not run_checks(evidence(gpus="0, NVIDIA A100, 535.104.05")).errors
    gpu_cfg = CONFIG.replace("KIND_CPU", "KIND_GPU")
    d = run_checks(evidence(**{"config add_sub": gpu_cfg}))
    assert any("KIND_GPU" in f.title for f in d.errors)
    assert layout.driver_is_new_enough("525.60.13") and not layout.driver_is_new_enough("525.60.11")


def test_service_restart_loop_and_failed_state():
    head = evidence().split("@@begin")[0].replace("service_ActiveState=active", "service_ActiveState=failed")
    d = run_checks(evidence(values=head, journal="Started tritonserver.service - NVIDIA Triton\n"
                                                  "tritonserver.service: Start request repeated too quickly."))
    assert "restart_loop" in errors(d)
    assert any(f.action == "restart" for f in d.errors)


def test_unit_argv_last_exec_start_wins():
    text = "ExecStart=/a --x=1\n# drop-in\nExecStart=\nExecStart=/b \"--backend-directory=/o/\""
    assert doctor.unit_argv(text) == ["/b", "--backend-directory=/o/"]
