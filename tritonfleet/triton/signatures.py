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
    Signature("port_in_use", r"failed to start (HTTP|GRPC|Metrics) service: Unavailable - Socket '([^']+)' already in use", "another process holds the port the server wants", "stop the other process (`ss -ltnp` names it) or give Triton other ports (`triton_http_port` / `grpc` / `metrics`)", f"{GH}/pytriton/issues/1", "E1125 15:09:31.2 532 main.cc:257] failed to start HTTP service: Unavailable - Socket '0.0.0.0:8000' already in use"),
    Signature("missing_version", r"at least one version must be available under the version policy of model '([^']+)'", "the model folder has no numeric version folder (e.g. `1/`) that its version policy selects", "add the version folder (`<model>/1/model.py`) to the repository and deploy again", f"{GH}/server/issues/3623", "failed to load model 'add_sub_chain': at least one version must be available under the version policy of model 'add_sub_chain'"),
    Signature("bad_config", r"Error parsing text-format inference\.ModelConfig: (\d+):(\d+)|failed to read text proto from (\S+)", "a config.pbtxt on the host does not parse as ModelConfig; the model is skipped (it shows in the index without a state)", "fix the config.pbtxt at that line:column in the repository on the control machine and deploy again (deploy validates it first)", f"{GH}/server/issues/6571", "[libprotobuf ERROR text_format.cc:337] Error parsing text-format inference.ModelConfig: 31:13: Message type \"inference.ModelConfig\" has no field named \"bogus_field\"."),
    Signature("exit_on_error", r"error: creating server: Internal - failed to load all models", "a model failed to load and --exit-on-error is true (Triton's default), so the whole server exited", "fix the failing model (its error is above this line) or run with `--exit-on-error=false` (tritonfleet's default)", f"{GH}/server/issues/6416", "error: creating server: Internal - failed to load all models"),
    Signature("restart_loop", r"Start request repeated too quickly", "the server kept exiting and systemd stopped restarting it (start limit); the cause is in the lines before", "fix the cause, then `systemctl reset-failed tritonserver && systemctl start tritonserver`", f"{GH}/server/issues/6416", "tritonserver.service: Start request repeated too quickly.", "restart"),
    Signature("stub_python_mismatch", r"No module named '([^']+)'", "a module the model imports is not installed for the Python the stub embeds; packages installed for another Python minor (another python3, a venv, pip for 3.X) are invisible", "install it for the host's python3 (the stub's Python, see `ldd` of the stub), or pack an EXECUTION_ENV_PATH whose Python matches the stub", f"{GH}/server/issues/3189", "failed to load 'str_upper' version 1: Internal: ModuleNotFoundError: No module named 'package_that_is_not_installed'"),
    Signature("cuda_driver_insufficient", r"CUDA driver version is insufficient for CUDA runtime version", "the host's NVIDIA driver is older than the bundle's CUDA 12.6 runtime needs (or there is no GPU: then harmless)", "on a GPU host install a driver >= 525.60.13; on a CPU-only host ignore it (use KIND_CPU models)", "https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html", "W1125 15:09:31.257838 532 pinned_memory_manager.cc:273] \"Unable to allocate pinned system memory, pinned memory pool will not be available: CUDA driver version is insufficient for CUDA runtime version\"", "", "info"),
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
