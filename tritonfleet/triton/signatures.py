"""Known Triton Python-backend failures: the log line (or repository-index reason) each one leaves, its cause,
its fix and the upstream issue. ONE table; adding a failure is one row, and its `example` (a real log line) is
its test (tests/test_signatures.py checks every row's pattern matches its example and maps to its cause).

`action` names the safe fix `invoke doctor --fix` applies for the row ("" when the fix needs a person):
  packages       install the missing package with the host's package manager
  chown_stub     give the stub to the service user
  backend_dir    drop the trailing slash from --backend-directory in the unit
  restart        reset the unit's start limit and start it again

`python3 -m tritonfleet.triton.signatures --markdown` rewrites README.md's troubleshooting section from this table
(between the markers below); `--check` exits 1 when the README is out of date.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.paths import REPO_ROOT


@dataclass(frozen=True)
class Signature:
    id: str
    pattern: str  # regex, searched in one log line or reason
    cause: str
    fix: str
    link: str
    example: str  # a real line tritonserver / systemd / ldd printed for it
    action: str = ""
    severity: str = "error"

    @property
    def regex(self) -> re.Pattern:
        return _compiled(self.pattern)


_CACHE: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    if pattern not in _CACHE:
        _CACHE[pattern] = re.compile(pattern)
    return _CACHE[pattern]


GH = "https://github.com/triton-inference-server"
# Order matters: the first row that matches a line names its cause (specific rows before generic ones).
SIGNATURES: tuple[Signature, ...] = (
    Signature("numpy_missing", r"No module named 'numpy'", "the host's Python (which the stub embeds) has no numpy; the stub imports it before any model", "install numpy for the host's python3 (Debian/Ubuntu/RHEL: `python3-numpy`)", f"{GH}/server/issues/7528", "failed to load 'add_sub' version 1: Internal: ModuleNotFoundError: No module named 'numpy'", "packages"),
    Signature("libpython_missing", r"(?:error while loading shared libraries: |^\s*)(libpython\d+\.\d+[\w.]*)(?:: cannot open shared object file| => not found)", "the shared libpython the stub links is not installed; the stub dies at start and the server HANGS loading", "install the shared libpython (Debian: `libpython3.X`, RHEL: `python3-libs`, SUSE: `libpython3_X-1_0`)", f"{GH}/server/issues/4398", "triton_python_backend_stub: error while loading shared libraries: libpython3.11.so.1.0: cannot open shared object file: No such file or directory", "packages"),
    Signature("stub_permission", r"Failed to give execute permission to triton_python_backend_stub", "the service user cannot run the stub and does not own it: when a trial run of the stub fails, the backend chmods it, which only its owner may do", "`chown triton:triton /opt/tritonserver/backends/python/triton_python_backend_stub`", f"{GH}/server/issues/5819", "failed to load 'add_sub' version 1: Internal: Failed to give execute permission to triton_python_backend_stub in /opt/tritonserver/backends/python/triton_python_backend_stub add_sub Error No.: -1", "chown_stub"),
    Signature("backend_dir_trailing_slash", r"No module named 'model'", "--backend-directory ends with '/': the Python backend no longer recognises its own folder and imports `model` from it", "drop the trailing slash, or better the flag (the default is /opt/tritonserver/backends)", f"{GH}/server/issues/6730", "failed to load 'add_sub' version 1: Internal: ModuleNotFoundError: No module named 'model'", "backend_dir"),
    Signature("shm_too_small", r"Unable to initialize shared memory key|Failed to increase the shared memory pool size", "/dev/shm is smaller than the Python backend's shm regions (shm-default-byte-size per model instance)", "grow /dev/shm (`mount -o remount,size=1G /dev/shm`, or the container's --shm-size) or lower `--backend-config=python,shm-default-byte-size=N`", f"{GH}/server/issues/3036", "failed to load 'add_sub' version 1: Internal: Unable to initialize shared memory key 'triton_python_backend_shm_region_e644' to requested size (3221225472 bytes). Error: No space left on device"),
    Signature("grpc_tls_unusable", r"Invalid cert chain file|Invalid private key|Unable to create secure server with credentials of type Ssl", "tritonserver could not use its gRPC TLS certificate or key (missing, not readable by the service user, not PEM, or a key that is not the certificate's): gRPC does not start, and Triton then reports it as 'Socket ... already in use' although no process holds the port", "check /etc/tritonfleet/tls (root:<service group> 0750, files 0640) and the files `triton_grpc_tls_cert` / `_key` name; `invoke deploy` checks them on the control machine and pushes them again", f"{GH}/server/issues/5566", "E1126 14:20:34.102594114    5147 ssl_transport_security.cc:780]        Invalid private key."),
    Signature("port_in_use", r"failed to start (HTTP|GRPC|Metrics) service: Unavailable - Socket '([^']+)' already in use", "another process holds the port the server wants", "stop the other process (`ss -ltnp` names it) or give Triton other ports (`triton_http_port` / `grpc` / `metrics`)", f"{GH}/pytriton/issues/1", "E1125 15:09:31.2 532 main.cc:257] failed to start HTTP service: Unavailable - Socket '0.0.0.0:8000' already in use"),
    Signature("missing_version", r"at least one version must be available under the version policy of model '([^']+)'", "the model folder has no numeric version folder (e.g. `1/`) that its version policy selects", "add the version folder (`<model>/1/model.py`) to the repository and deploy again", f"{GH}/server/issues/3623", "failed to load model 'add_sub_chain': at least one version must be available under the version policy of model 'add_sub_chain'"),
    Signature("bad_config", r"Error parsing text-format inference\.ModelConfig: (\d+):(\d+)|failed to read text proto from (\S+)", "a config.pbtxt on the host does not parse as ModelConfig; the model is skipped (it shows in the index without a state)", "fix the config.pbtxt at that line:column in the repository on the control machine and deploy again (deploy validates it first)", f"{GH}/server/issues/6571", "[libprotobuf ERROR text_format.cc:337] Error parsing text-format inference.ModelConfig: 31:13: Message type \"inference.ModelConfig\" has no field named \"bogus_field\"."),
    Signature("exit_on_error", r"error: creating server: Internal - failed to load all models", "a model failed to load and --exit-on-error is true (Triton's default), so the whole server exited", "fix the failing model (its error is above this line) or run with `--exit-on-error=false` (tritonfleet's default)", f"{GH}/server/issues/6416", "error: creating server: Internal - failed to load all models"),
    Signature("restart_loop", r"Start request repeated too quickly", "the server kept exiting and systemd stopped restarting it (start limit); the cause is in the lines before", "fix the cause, then `systemctl reset-failed tritonserver && systemctl start tritonserver`", f"{GH}/server/issues/6416", "tritonserver.service: Start request repeated too quickly.", "restart"),
    Signature("stub_python_mismatch", r"No module named '([^']+)'", "a module the model imports is not installed for the Python the stub embeds; packages installed for another Python minor (another python3, a venv, pip for 3.X) are invisible", "install it for the host's python3 (the stub's Python, see `ldd` of the stub), or pack an EXECUTION_ENV_PATH whose Python matches the stub", f"{GH}/server/issues/3189", "failed to load 'str_upper' version 1: Internal: ModuleNotFoundError: No module named 'package_that_is_not_installed'"),
    Signature("cuda_driver_insufficient", r"CUDA driver version is insufficient for CUDA runtime version", "the host's NVIDIA driver is older than the bundle's CUDA 12.6 runtime needs (or there is no GPU: then harmless)", "on a GPU host install a driver >= 525.60.13; on a CPU-only host ignore it (use KIND_CPU models)", "https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html", "W1125 15:09:31.257838 532 pinned_memory_manager.cc:273] \"Unable to allocate pinned system memory, pinned memory pool will not be available: CUDA driver version is insufficient for CUDA runtime version\"", "", "info"),
    Signature("decoupled_execute_returns", r"is using the decoupled mode and the execute function must return None", "the model is decoupled (`model_transaction_policy { decoupled: true }`) but its execute() returns responses: a decoupled model answers through each request's response sender and returns None; every request fails and no final response comes", "in execute(), send each response with `request.get_response_sender().send(...)`, end with `send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)` and return None; or drop `decoupled: true` if the model answers each request once", f"{GH}/tensorrtllm_backend/issues/488", "E1126 11:44:12.327812 29330 pb_stub.cc:714] \"Failed to process the request(s) for model 'decoupled_returns_0_0', message: Python model 'decoupled_returns_0_0' is using the decoupled mode and the execute function must return None.\""),
    Signature("sequence_without_correlation_id", r"must specify a non-zero or non-empty correlation ID", "the model uses sequence batching (it is stateful) and the request carries no correlation ID: Triton refuses it before the model sees it, over HTTP and gRPC alike (a BLS call or an ensemble step into such a model needs one too)", "send `sequence_id` (an integer, or text when the CORRID control is TYPE_STRING) with `sequence_start` on a sequence's first request and `sequence_end` on its last; tritonfleet's smoke test sends a one-request sequence under a fresh ID", f"{GH}/server/issues/5188", "inference over grpc failed: [StatusCode.INVALID_ARGUMENT] inference request to model 'running_sum' must specify a non-zero or non-empty correlation ID"),
    Signature("sequence_not_started", r"must specify the START flag on the first request of the sequence|max sequence idle exceeded", "a request continues a sequence Triton does not know: the sequence's first request had no START flag, or the sequence sat idle longer than `max_sequence_idle_microseconds` (1 s unless the config sets it) and Triton released it (with --log-verbose=1: `Reaper: CORRID N: max sequence idle exceeded`)", "send `sequence_start` on a sequence's first request; set `sequence_batching { max_sequence_idle_microseconds: N }` above the longest pause between a sequence's requests", f"{GH}/server/issues/3577", "[StatusCode.INVALID_ARGUMENT] inference request for sequence 4242 to model 'seq_oldest' must specify the START flag on the first request of the sequence"),
    Signature("string_correlation_id_broken", r"unexpected number of string elements 2 for inference input '([^']+)', expecting 1", "when that input is the model's CORRID control with `data_type: TYPE_STRING`: Triton 2.50 to 2.53 (24.09 to 24.12) size the string correlation ID tensor at 128 bytes whatever the ID's length, and their own input check counts the padding as a second string, so every request with an ID shorter than 128 bytes fails (IDs of 125 to 127 bytes crash the model's stub); fixed in Triton 25.01. For another input: the request sent more strings than its shape holds", "give the CORRID control `data_type: TYPE_UINT64` and send integer sequence IDs (or use Triton 25.01 or later); for another input, send as many strings as its shape holds", f"{GH}/core/pull/425", "inference over http failed: [400] unexpected number of string elements 2 for inference input 'CORRID', expecting 1"),
    Signature("glibc_too_old", r"GLIBC_(2\.\d+)' not found", "the host's glibc is older than the bundle's binaries need, so tritonserver (or the stub) cannot start; the preflight refuses such a host, naming the version the bundle recorded from its ELF files", "deploy to a host with that glibc or newer (Debian 12: 2.36, Ubuntu 22.04: 2.35), or bring a Triton tree built for the host's glibc (`invoke bundle --source DIR`)", "https://github.com/triton-inference-server/pytriton/issues/68", "/opt/tritonserver/bin/tritonserver: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.34' not found (required by /opt/tritonserver/bin/tritonserver)"),
    Signature("glibcxx_too_old", r"GLIBCXX_(3\.4\.\d+)' not found", "the host's system libstdc++ is older than the bundle's binaries need (GLIBCXX_3.4.30 is GCC 12's libstdc++); the preflight refuses such a host", "deploy to a host whose libstdc++ is as new (Debian 12, Ubuntu 22.04), or bring a Triton tree built for the host's (`invoke bundle --source DIR`)", f"{GH}/server/issues/7913", "/opt/tritonserver/bin/tritonserver: /lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.30' not found (required by /opt/tritonserver/bin/tritonserver)"),
    Signature("exec_format_error", r"(?:Failed at step EXEC spawning|Failed to execute) \S+: Exec format error|cannot execute binary file: Exec format error", "tritonserver is built for another CPU architecture than the host's (an x86_64 bundle on an aarch64 host, or the reverse), so systemd cannot start it (status=203/EXEC); the preflight compares the bundle's ELF machine with the host's C library", "deploy to a host of the bundle's architecture, or build a bundle from a Triton tree for the host's (`invoke bundle --source DIR`, e.g. the NGC container's /opt/tritonserver for that architecture)", "https://github.com/DNSCrypt/dnscrypt-proxy/issues/1054", "Nov 18 18:18:36 server systemd: Failed at step EXEC spawning /opt/dnscrypt-proxy/dnscrypt-proxy: Exec format error"),
    Signature("stub_vendored_libpython", r"(libpython\d+-[0-9a-f]+\.\d+\.so[\d.]*) => /", "the stub links a libpython the bundle ships in its lib/ (renamed by auditwheel, as nvidia-pytriton's Python 3.13 stub does), not the host's: that interpreter does not see the host Python's built-in modules and site folders, so every model fails with `No module named '_struct'` (or 'numpy'), which the table reads as a missing module", "relink the stub to the host's libpython (`patchelf --replace-needed libpython3-419a3a08.13.so.1.0 libpython3.13.so.1.0 python_backend_stubs/3.13/triton_python_backend_stub` in the Triton tree, then `invoke bundle --source DIR`), or use a host whose python3 has a stub that links the host's libpython", f"{GH}/core/pull/507", "\tlibpython3-419a3a08.13.so.1.0 => /opt/tritonserver/lib/libpython3-419a3a08.13.so.1.0 (0x00007f081c000000)"),
    Signature("numpy2_empty_outputs", r"output tensor shape does not match size of output|cannot reshape array of size 0 into shape", "the stub's Python has numpy >= 2 but the bundle's Python backend was built before numpy 2 support (Triton 2.51: pybind11 2.10): models load, and every output comes back empty; the preflight refuses such a host", "give the host's python3 a numpy below 2, or bring a Triton 2.52 or newer tree (`invoke bundle --source DIR`)", f"{GH}/python_backend/pull/384", "{\"error\":\"output tensor shape does not match size of output for 'OUTPUT0'\"}"),
    Signature("gpu_id_unavailable", r"specifies invalid or unsupported gpu id (\d+)", "a KIND_GPU instance group names a GPU Triton cannot use: one the host does not have (nvidia-smi's index), one below the minimum compute capability (6.0 unless --min-supported-compute-capability), or none at all when the driver cannot run the bundle's CUDA runtime or there is no GPU; the preflight checks the first two against the host's GPUs", "list only the host's GPUs in the instance group's `gpus` (or leave `gpus` out to use every GPU), give hosts of another kind their own `configs/<name>.pbtxt` selected by `triton_model_config_name`, or use KIND_CPU", f"{GH}/server/issues/2584", "E1126 12:05:58.623761 27106 model_lifecycle.cc:642] \"failed to load 'gpu_probe' version 1: Invalid argument: instance group gpu_probe_0 of model gpu_probe specifies invalid or unsupported gpu id 0. GPUs with at least the minimum required CUDA compute compatibility of 6.000000 are: \""),
)

BY_ID = {s.id: s for s in SIGNATURES}


def match(text: str) -> Signature | None:
    """The first signature that matches a line or reason, or None."""
    for sig in SIGNATURES:
        if sig.regex.search(text or ""):
            return sig
    return None


def match_lines(lines) -> list[tuple[Signature, str]]:
    """(signature, first line that showed it) for each signature found in these lines, in table order."""
    found: dict[str, str] = {}
    for line in lines:
        sig = match(line)
        if sig and sig.id not in found:
            found[sig.id] = line.strip()
    return [(BY_ID[i], found[i]) for i in BY_ID if i in found]


# --------------------------------------------------------------------------------------------------------------
# README section

START = "<!-- troubleshooting:start -->"
END = "<!-- troubleshooting:end -->"
README = REPO_ROOT / "README.md"
_ACTION_TEXT = {"packages": "installs it", "chown_stub": "chowns it", "backend_dir": "edits the unit",
                "restart": "restarts", "": "explains"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The troubleshooting section, generated from SIGNATURES."""
    lines = [
        START,
        "<!-- generated by `python3 -m tritonfleet.triton.signatures --markdown` from tritonfleet/triton/signatures.py: "
        "edit the table there -->",
        "## Troubleshooting",
        "",
        "`invoke doctor --host NAME` (or `--group`) checks a host and its running server: the `/opt/tritonserver`",
        "layout and `--backend-directory` (process and unit), the stub (`ldd`, its Python against the host's, owner),",
        "numpy, `/dev/shm` against the Python backend's shm regions, ports held by other processes, free disk, the",
        "GPU driver, the unit (state, restart loops, journal) and every model that is not READY, matched against the",
        "table below. Each finding has a severity, the evidence it saw and the fix. `--fix` applies the safe fixes",
        "(packages, stub owner, trailing slash, restart), waits for readiness and checks again; `--json` prints a",
        "report; the exit code is 1 while an error remains. A failed `deploy` or `smoke` prints the same diagnosis.",
        "",
        "| signature (log line or reason) | cause | fix | `--fix` | upstream |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in SIGNATURES:
        link = s.link.replace("https://github.com/", "").replace("/issues/", "#") \
            if s.link.startswith("https://github.com/") else s.link.split("/")[2]
        lines.append(f"| `{_cell(s.pattern)}` | {_cell(s.cause)} | {_cell(s.fix)} | {_ACTION_TEXT[s.action]} "
                     f"| [{_cell(link)}]({s.link}) |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def readme_section(text: str) -> str | None:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(END)] + "\n"


def rewrite_readme(path: Path = README) -> bool:
    """Replace the section between the markers (or add it before `## Libraries chosen`); True if it changed."""
    text = path.read_text()
    section = markdown()
    start, end = text.find(START), text.find(END)
    if start >= 0 and end > start:
        new = text[:start] + section.rstrip("\n") + text[end + len(END):]
    else:
        anchor = text.find("## Libraries chosen")
        anchor = anchor if anchor >= 0 else len(text)
        new = text[:anchor] + section + "\n" + text[anchor:]
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str]) -> int:
    if "--markdown" in argv:
        changed = rewrite_readme()
        print(f"{README}: troubleshooting section {'rewritten' if changed else 'up to date'}")
        return 0
    if "--check" in argv:
        section = readme_section(README.read_text())
        if section != markdown():
            print(f"{README}: troubleshooting section is out of date: run python3 -m tritonfleet.triton.signatures --markdown")
            return 1
        return 0
    print(markdown(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
