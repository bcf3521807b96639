"""`invoke doctor`: diagnose a host's Triton Python backend and its running server, and fix what is safe.

All host evidence comes back in ONE round trip (a POSIX sh script built, like facts.py's, from the generic probes
of `engine/evidence.py` and the doctor's own): the unit and the running process's argv, the /opt/tritonserver
layout, the stub (owner, `ldd` with the unit's LD_LIBRARY_PATH), numpy as the service user, /dev/shm, listening
sockets, free disk, GPUs, the journal of the last run and the model repository (listing and config.pbtxt files).
The repository index is read from the control machine with a short timeout (a server hung in loading does not
slow the diagnosis). Every check below turns evidence into findings; what each failure means lives in
`layout.py` (layout, defaults) and `signatures.py` (log lines, causes, fixes).
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import asdict, dataclass, field

from tritonfleet import secrets
from tritonfleet.triton import apikey, layout, signatures
from tritonfleet.engine import evidence
from tritonfleet.engine.executor import for_each_host
from tritonfleet.engine.packages import install_command
from tritonfleet.errors import TritonfleetError
from tritonfleet.triton.endpoint import endpoint_for
from tritonfleet.triton.server import ServerClient
from tritonfleet.triton.bundle import PYTHON_BACKEND_NUMPY2_SINCE
from tritonfleet.triton.layout import at_least
from tritonfleet.triton.signatures import BY_ID

q = shlex.quote
SEVERITIES = ("error", "warning", "info")
JOURNAL_LINES = 300

SERVICE_PROPERTIES = ("LoadState", "ActiveState", "SubState", "MainPID", "NRestarts", "Result", "UnitFileState",
                      "FragmentPath", "DropInPaths", "Description", "User", "ExecMainStatus")

# The doctor's own probes; $main_pid and $unit_user come from the systemd_unit fragment before them.
_TRITON_PROBES = r"""
begin cmdline; [ -n "$main_pid" ] && [ "$main_pid" != 0 ] && tr '\0' '\n' < "/proc/$main_pid/cmdline" 2>/dev/null; end
begin unit; systemctl cat "$TF_SERVICE" 2>/dev/null; end
echo "root_target=$(readlink -f "$TF_ROOT" 2>/dev/null)"
echo "triton_version=$(head -c 64 "$TF_ROOT/TRITON_VERSION" 2>/dev/null)"
for f in $TF_FILES; do [ -e "$TF_ROOT/$f" ] && echo "file=$f"; done
echo "stub_stat=$(stat -L -c '%U %a' "$TF_STUB" 2>/dev/null)"
begin ldd; [ -e "$TF_STUB" ] && LD_LIBRARY_PATH="$TF_LIB" timeout 20 ldd "$TF_STUB" 2>&1; end
user=${unit_user:-$TF_USER}
run_as=""; id "$user" >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1 && run_as="runuser -u $user --"
begin numpy; (cd / && timeout 30 $run_as python3 -c 'import numpy; print("numpy_version=" + numpy.__version__)' 2>&1 | tail -n 3); end
begin ss; ss -ltnpH 2>&1; end
begin journal; journalctl -u "$TF_SERVICE" -n "$TF_JOURNAL" --no-pager -o cat 2>&1; end
repo=""; [ -n "$main_pid" ] && [ "$main_pid" != 0 ] && repo=$(tr '\0' '\n' < "/proc/$main_pid/cmdline" 2>/dev/null | sed -n 's/^--model-repository=//p' | head -n 1)
repo=${repo:-$TF_REPO}
echo "repo=$repo"
begin repo_listing; [ -d "$repo" ] && find "$repo/" -mindepth 1 -maxdepth 2 -printf '%y %P\n' 2>/dev/null | sort | head -n 5000; end
for c in "$repo"/*/config.pbtxt; do
  [ -f "$c" ] || continue
  begin "config $(basename "$(dirname "$c")")"; head -c 262144 "$c"; end
done
"""

_SCRIPT = evidence.script(
    evidence.PYTHON_VERSION, evidence.PKG_MGR, evidence.systemd_unit(layout.SERVICE, SERVICE_PROPERTIES),
    evidence.DISKS, evidence.gpus(timeout_s=20), _TRITON_PROBES, apikey.READ_COMMAND,
)


@dataclass
class Finding:
    check: str
    severity: str  # error | warning | info
    title: str
    evidence: list = field(default_factory=list)
    fix: str = ""
    link: str = ""
    action: str = ""  # the safe fix `--fix` applies ("" when a person must act)
    signature: str = ""
    models: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Evidence:
    host: evidence.Host = field(default_factory=evidence.Host)  # the generic probes: python, disks, GPUs, unit
    values: dict = field(default_factory=dict)  # the last value of each `key=value` line
    sections: dict = field(default_factory=dict)
    files: set = field(default_factory=set)
    configs: dict = field(default_factory=dict)  # model name -> config.pbtxt text

    @property
    def service(self) -> dict:
        return self.host.service

    def section(self, name: str) -> str:
        return self.sections.get(name, "")

    def lines(self, name: str) -> list[str]:
        return [ln for ln in self.section(name).splitlines() if ln.strip()]


@dataclass
class Diagnosis:
    host: str
    findings: list = field(default_factory=list)
    reachable: bool = True
    index: list = field(default_factory=list)
    ready: bool = False
    seconds: float = 0.0

    def add(self, finding: Finding) -> None:
        """Add a finding; a second one with the same signature merges into the first (evidence, models)."""
        for f in self.findings:
            if (finding.signature and f.signature == finding.signature) or \
                    (f.check, f.title) == (finding.check, finding.title):
                f.evidence += [e for e in finding.evidence if e not in f.evidence]
                f.models += [m for m in finding.models if m not in f.models]
                if SEVERITIES.index(finding.severity) < SEVERITIES.index(f.severity):
                    f.severity = finding.severity
                f.action = f.action or finding.action
                return
        self.findings.append(finding)

    @property
    def errors(self) -> list:
        return [f for f in self.findings if f.severity == "error"]

    def sorted(self) -> list:
        return sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity))

    def as_dict(self) -> dict:
        return {"host": self.host, "reachable": self.reachable, "ready": self.ready,
                "errors": len(self.errors), "seconds": round(self.seconds, 2),
                "findings": [f.as_dict() for f in self.sorted()], "index": self.index}


# ----------------------------------------------------------------------------------------------------------------
# evidence


def evidence_command(hostvars: dict) -> str:
    return evidence.command(_SCRIPT, {
        "TF_SERVICE": layout.SERVICE, "TF_ROOT": layout.TRITON_ROOT, "TF_STUB": layout.STUB_PATH,
        "TF_LIB": layout.LIB_DIR, "TF_USER": str(hostvars.get("triton_user", "triton")),
        "TF_REPO": str(hostvars.get("triton_model_repository_path", "")), "TF_JOURNAL": str(JOURNAL_LINES),
        "TF_FILES": " ".join(["bin/tritonserver", *layout.PYTHON_BACKEND_FILES, layout.STUB_IN_RELEASE]),
    })


def parse_evidence(output: str) -> Evidence:
    """The host's evidence; the API keys in it (the key file's, the running server's argv) registered as
    secrets before any finding can show them."""
    out = evidence.parse_output(output)
    argv = " ".join(out.sections.get("cmdline", "").split())
    secrets.register([out.value("api_key"), *apikey.keys_in_cmdline(argv)])
    configs = {name[len("config "):]: text for name, text in out.sections.items() if name.startswith("config ")}
    sections = {name: text for name, text in out.sections.items() if not name.startswith("config ")}
    return Evidence(evidence.parse_host(out), {key: values[-1] for key, values in out.values.items()}, sections,
                    set(out.every("file")), configs)


def unit_argv(unit_text: str) -> list[str]:
    """tritonserver's argv from `systemctl cat` output: the last non-empty ExecStart= wins."""
    exec_start = ""
    lines = unit_text.replace("\\\n", " ").splitlines()
    for line in lines:
        if line.startswith("ExecStart="):
            value = line[len("ExecStart="):].strip()
            exec_start = value  # an empty ExecStart= resets (drop-ins)
    try:
        argv = shlex.split(exec_start.lstrip("-@:+!"))
    except ValueError:
        argv = exec_start.split()
    return argv


def _server_index(server: ServerClient, timeout: float) -> tuple[bool, list | None, str]:
    try:
        ready = server.ready(timeout=timeout)
    except OSError as exc:
        return False, None, f"{server.endpoint} does not answer: {exc}"
    return ready, server.index(timeout=timeout), ""


def gather(conn, hostvars: dict) -> Evidence:
    return parse_evidence(conn.run(evidence_command(hostvars), check=False, timeout=120).stdout)


# ----------------------------------------------------------------------------------------------------------------
# checks


class _Context:
    def __init__(self, ev: Evidence, hostvars: dict, address: str, host_name: str):
        self.ev, self.vars, self.address, self.host_name = ev, hostvars, address, host_name
        self.proc_argv = [a for a in ev.lines("cmdline")]
        self.unit_text = ev.section("unit")
        self.unit_argv = unit_argv(self.unit_text)
        self.argv = self.proc_argv or self.unit_argv
        self.python = ev.host.python_version
        self.user = ev.service.get("User") or str(hostvars.get("triton_user", "triton"))
        self.gpus = ev.host.gpus
        self.configs = {}
        self.config_errors = {}
        for name, text in ev.configs.items():
            cfg, err = _parse_config(text)
            if cfg is not None:
                self.configs[name] = cfg
            else:
                self.config_errors[name] = err

    def server_vars(self) -> dict:
        """The vars that say where the server listens, as the running server (or its unit) has them."""
        bind = layout.flag_values(self.argv, "--http-address")
        return {"triton_http_port": self.port("http"), "triton_grpc_port": self.port("grpc"),
                "triton_http_address": bind[-1] if bind else self.vars.get("triton_http_address", "0.0.0.0")}

    def port(self, kind: str) -> int:
        flag, var = layout.PORT_FLAGS[kind]
        values = layout.flag_values(self.argv, flag)
        try:
            return int(values[-1]) if values else int(self.vars.get(var, layout.DEFAULT_PORTS[kind]))
        except ValueError:
            return layout.DEFAULT_PORTS[kind]

    def packages(self) -> layout.HostPackages | None:
        """The host's package names by role; None when tritonfleet does not know its package manager."""
        try:
            return layout.host_packages(self.ev.host.pkg_mgr, self.python or "3")
        except TritonfleetError:
            return None


def _parse_config(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig
    try:
        return text_format.Parse(text, ModelConfig()), ""
    except text_format.ParseError as exc:
        return None, str(exc)


def _sig_finding(check: str, sig_id: str, title: str, evidence: list, **kw) -> Finding:
    sig = BY_ID[sig_id]
    return Finding(check, kw.pop("severity", sig.severity), title, evidence, kw.pop("fix", sig.fix),
                   sig.link, kw.pop("action", sig.action), sig.id, **kw)


def check_service(c: _Context, d: Diagnosis) -> None:
    s = c.ev.service
    if s.get("LoadState") in ("not-found", "", None):
        d.add(Finding("service", "error", f"{layout.SERVICE}.service is not installed",
                      [f"LoadState={s.get('LoadState', '')}"], f"run `invoke deploy --host {c.host_name}`"))
        return
    state = f"ActiveState={s.get('ActiveState')} SubState={s.get('SubState')} Result={s.get('Result')} " \
            f"NRestarts={s.get('NRestarts')}"
    if s.get("ActiveState") == "failed" or (s.get("ActiveState") == "inactive" and s.get("UnitFileState") == "enabled"):
        d.add(Finding("service", "error", f"{layout.SERVICE} is not running", [state],
                      "fix the cause below, then restart it (`--fix` restarts it)", action="restart"))
    elif s.get("ActiveState") == "activating" and s.get("SubState") == "auto-restart":
        d.add(Finding("service", "error", f"{layout.SERVICE} keeps exiting and systemd restarts it", [state],
                      "fix the cause below (the journal's last lines)", action="restart"))
    elif s.get("NRestarts", "0").isdigit() and int(s["NRestarts"]) > 0:
        d.add(Finding("service", "warning", f"{layout.SERVICE} was restarted {s['NRestarts']} time(s) by systemd",
                      [state], "look at the journal for why it exited"))


def check_layout(c: _Context, d: Diagnosis) -> None:
    root = c.ev.values.get("root_target", "")
    missing = [f for f in ["bin/tritonserver", *layout.PYTHON_BACKEND_FILES] if f not in c.ev.files]
    if missing:
        d.add(Finding("layout", "error", f"{layout.TRITON_ROOT} is incomplete",
                      [f"{layout.TRITON_ROOT} -> {root or '(missing)'}; missing: {', '.join(missing)}"],
                      f"run `invoke deploy --host {c.host_name}` (pushes the release and switches the link)"))


def check_backend_directory(c: _Context, d: Diagnosis) -> None:
    seen = []
    for where, argv in (("process", c.proc_argv), ("unit", c.unit_argv)):
        for value in layout.flag_values(argv, "--backend-directory"):
            seen.append((where, value))
    slashed = [(w, v) for w, v in seen if len(v) > 1 and v.endswith("/")]
    if slashed:
        d.add(_sig_finding("backend_directory", "backend_dir_trailing_slash",
                           "--backend-directory has a trailing slash: every Python model fails with "
                           "No module named 'model'",
                           [f"{w}: --backend-directory={v}" for w, v in slashed]))
        return
    for where, value in seen:
        if layout.normalize_backend_directory(value) == layout.DEFAULT_BACKEND_DIRECTORY:
            d.add(Finding("backend_directory", "info", "--backend-directory is set to the compiled-in default",
                          [f"{where}: --backend-directory={value}"], "the flag is not needed; leave it out"))
        else:
            d.add(Finding("backend_directory", "warning", "--backend-directory is not the compiled-in default",
                          [f"{where}: --backend-directory={value}"],
                          f"the Python backend must be at <dir>/python; tritonfleet installs it under "
                          f"{layout.DEFAULT_BACKEND_DIRECTORY}"))


def check_stub(c: _Context, d: Diagnosis) -> None:
    if layout.STUB_IN_RELEASE not in c.ev.files:
        d.add(Finding("stub", "error", "the Python backend stub is missing", [f"{layout.STUB_PATH}: not found"],
                      f"run `invoke deploy --host {c.host_name}` (installs the stub for the host's Python)"))
        return
    ldd = c.ev.lines("ldd")
    pkgs = c.packages()
    vendored = BY_ID["stub_vendored_libpython"]
    for line in ldd:
        m = re.search(r"(libpython(\d+\.\d+)\S*) => (.*)", line)
        if vendored.regex.search(line):
            d.add(_sig_finding("stub", vendored.id, f"the stub links {vendored.regex.search(line).group(1)}, a "
                               f"libpython from the bundle's lib/, not the host's libpython{c.python}.so.1.0",
                               [line.strip()]))
        elif m:
            stub_py = m.group(2)
            if c.python and stub_py != c.python:
                d.add(_sig_finding("stub", "stub_python_mismatch",
                                   f"the stub embeds Python {stub_py} but the host's python3 is {c.python}",
                                   [line.strip(), f"python3 --version: {c.python}"],
                                   fix=f"install the stub built for Python {c.python}: `invoke deploy --host "
                                       f"{c.host_name}` (or a bundle with a {c.python} stub)", action=""))
            elif "not found" in m.group(3):
                d.add(_sig_finding("stub", "libpython_missing",
                                   f"the shared libpython{stub_py} the stub links is not installed",
                                   [line.strip()],
                                   fix=f"install {pkgs.libpython if pkgs else f'the shared libpython{stub_py}'}"))
        elif "not found" in line:
            d.add(Finding("stub", "error", "a library the stub links is not found", [line.strip()],
                          f"check {layout.LIB_DIR} (the unit's LD_LIBRARY_PATH) is the bundle's lib folder"))
    owner, _, mode = (c.ev.values.get("stub_stat") or "").partition(" ")
    if owner and owner != c.user:
        # The backend chmods the stub whenever its trial run fails, which only its owner may do: a stub the user
        # cannot execute fails now; one it can (o+x) fails the first time the backend wants to chmod it.
        others_x = mode.strip().isdigit() and int(mode.strip(), 8) & 0o001
        d.add(_sig_finding("stub", "stub_permission",
                           f"the stub is owned by {owner}, not by the service user {c.user}"
                           + ("" if others_x else f", and {c.user} cannot execute it"),
                           [f"stat {layout.STUB_PATH}: owner {owner}, mode {mode}"],
                           fix=f"`chown {c.user}:{c.user} {layout.STUB_PATH}`",
                           severity="warning" if others_x else "error"))


def check_numpy(c: _Context, d: Diagnosis) -> None:
    out = c.ev.lines("numpy")
    found = [ln[len("numpy_version="):] for ln in out if ln.startswith("numpy_version=")]
    triton = c.ev.values.get("triton_version", "").strip()
    if found and triton and at_least(found[-1], "2") and not at_least(triton, PYTHON_BACKEND_NUMPY2_SINCE):
        d.add(_sig_finding("numpy", "numpy2_empty_outputs",
                           f"python3 {c.python} has numpy {found[-1]} but the Python backend of Triton {triton} "
                           "was built before numpy 2 support: models load and every output comes back empty",
                           [f"import numpy as {c.user}: numpy_version={found[-1]}",
                            f"{layout.TRITON_ROOT}/TRITON_VERSION: {triton}"]))
    if found:
        return
    pkgs = c.packages()
    if not c.python:
        d.add(Finding("numpy", "error", "the host has no python3", out[-1:],
                      "install python3 (the stub embeds the host's Python)"))
        return
    d.add(_sig_finding("numpy", "numpy_missing", f"python3 {c.python} cannot import numpy (as user {c.user})",
                       out[-1:] or ["import numpy failed"],
                       fix=f"install {pkgs.numpy if pkgs else 'numpy for python3'}"))


def _python_instances(c: _Context) -> int:
    total = 0
    n_gpus = max(1, len(c.gpus))
    for cfg in c.configs.values():
        if cfg.backend != "python":
            continue
        if not cfg.instance_group:
            total += n_gpus if c.gpus else 1
        for group in cfg.instance_group:
            count = group.count or 1
            # KIND_GPU (1) or KIND_AUTO (0) with GPUs: one set per GPU listed (all GPUs when none are listed)
            if group.kind in (0, 1) and c.gpus:
                count *= len(group.gpus) or n_gpus
            total += count
    return total


def check_shm(c: _Context, d: Diagnosis) -> None:
    total_kb, free_kb = c.ev.host.shm_kb, c.ev.host.shm_free_kb
    if total_kb is None or free_kb is None:
        d.add(Finding("shm", "warning", "/dev/shm is not mounted", ["df -Pk /dev/shm: no answer"],
                      "mount a tmpfs on /dev/shm: the Python backend needs it"))
        return
    settings = layout.python_shm_settings(c.argv)
    per = settings["shm-default-byte-size"]
    instances = _python_instances(c)
    needed = per * max(1, instances)
    evidence = [f"/dev/shm: {total_kb} KiB, {free_kb} KiB free; {instances} Python model instance(s) x "
                f"shm-default-byte-size {per} B = {needed // 1024} KiB (+ shm-growth-byte-size "
                f"{settings['shm-growth-byte-size']} B each as they grow)"]
    if total_kb * 1024 < needed:
        d.add(_sig_finding("shm", "shm_too_small", "/dev/shm is too small for the Python model instances",
                           evidence))
    elif free_kb * 1024 < needed:
        d.add(_sig_finding("shm", "shm_too_small", "/dev/shm has too little free space for the Python "
                           "model instances", evidence, severity="warning"))


_SS = re.compile(r"^\S+\s+\d+\s+\d+\s+(\S+):(\d+)\s+\S+(?:\s+(.*))?$")


def check_ports(c: _Context, d: Diagnosis) -> None:
    wanted = {c.port(kind): kind for kind in layout.PORT_FLAGS}
    for line in c.ev.lines("ss"):
        m = _SS.match(line.strip())
        if not m or int(m.group(2)) not in wanted:
            continue
        procs = re.findall(r'\("([^"]+)",pid=(\d+)', m.group(3) or "")
        others = [f"{name} (pid {pid})" for name, pid in procs if name != "tritonserver"]
        if others:
            port = int(m.group(2))
            d.add(_sig_finding("ports", "port_in_use",
                               f"port {port} ({wanted[port]}) is held by {', '.join(others)}", [line.strip()],
                               fix=f"stop {', '.join(others)} or give Triton another {wanted[port]} port "
                                   f"(triton_{wanted[port]}_port)"))


def check_disk(c: _Context, d: Diagnosis) -> None:
    free = c.ev.host.disk_free_kb
    if free is not None and free < layout.FREE_DISK_MIN_KB:
        d.add(Finding("disk", "warning", f"only {free // 1024} MiB free in /opt",
                      [f"df -Pk /opt: {free} KiB available"],
                      f"free space: a release needs about 1 GiB; old ones are in {layout.RELEASES_DIR}"))


def check_gpus(c: _Context, d: Diagnosis) -> None:
    gpu_models = sorted(n for n, cfg in c.configs.items() if any(g.kind == 1 for g in cfg.instance_group))
    if not c.gpus:
        if gpu_models:
            d.add(Finding("gpu", "error", f"model(s) {', '.join(gpu_models)} ask for KIND_GPU but the host has no "
                          "GPU", ["nvidia-smi: not found or no GPU"], "use KIND_CPU for them or a GPU host",
                          models=gpu_models))
        else:
            d.add(Finding("gpu", "info", "CPU-only host (no nvidia-smi)", [],
                          "nothing to do: Python models run on CPU"))
        return
    for gpu in c.gpus:
        if not layout.driver_is_new_enough(gpu.driver):
            d.add(_sig_finding("gpu", "cuda_driver_insufficient",
                               f"GPU {gpu.index} driver {gpu.driver} is older than {layout.MIN_DRIVER_VERSION}, "
                               f"which the bundle's CUDA {layout.BUNDLE_CUDA_VERSION} runtime needs",
                               [f"nvidia-smi: GPU {gpu.index} {gpu.name}, driver {gpu.driver}"], severity="error"))


def check_repository(c: _Context, d: Diagnosis) -> None:
    repo = c.ev.values.get("repo", "")
    listing = c.ev.lines("repo_listing")
    models = sorted(p.split(" ", 1)[1] for p in listing if p.startswith("d ") and "/" not in p.split(" ", 1)[1])
    versions: dict[str, list] = {m: [] for m in models}
    for p in listing:
        kind, _, rel = p.partition(" ")
        model, _, sub = rel.partition("/")
        if kind == "d" and sub.isdigit() and model in versions:
            versions[model].append(sub)
    for model, vs in versions.items():
        if not vs:
            d.add(_sig_finding("repository", "missing_version", f"model '{model}' has no version folder",
                               [f"{repo}/{model}/: no numeric sub-folder"], models=[model]))
    for model, err in c.config_errors.items():
        d.add(_sig_finding("repository", "bad_config", f"{repo}/{model}/config.pbtxt does not parse",
                           [f"{repo}/{model}/config.pbtxt:{err}"], models=[model]))


def _last_run(journal: list[str], description: str, runs: int = 1) -> list[str]:
    """The journal lines since the unit's last start, or its last `runs` starts (older runs' errors are history, not
    the present)."""
    starts = [i for i, line in enumerate(journal)
              if line.startswith("Started ") and (not description or description in line)]
    return journal[starts[-runs] if len(starts) >= runs else 0:]


def check_journal(c: _Context, d: Diagnosis) -> None:
    journal, description = c.ev.lines("journal"), c.ev.service.get("Description", "")
    found = signatures.match_lines(_last_run(journal, description))
    if not found and c.ev.service.get("NRestarts", "0") not in ("", "0"):
        # a server systemd keeps restarting may be caught just after a new start, before this run fails: the run
        # before it failed the same way
        found = signatures.match_lines(_last_run(journal, description, runs=2))
    for sig, line in found:
        if sig.id == "cuda_driver_insufficient" and not c.gpus:
            continue  # harmless on a CPU-only host
        d.add(_sig_finding("journal", sig.id, sig.cause, [line[:600]]))


def check_models(c: _Context, d: Diagnosis, index: list | None, ready: bool, error: str) -> None:
    if index is None:
        if c.ev.service.get("ActiveState") == "active":
            d.add(Finding("models", "error", "the server does not answer its repository index",
                          [error or f"POST /v2/repository/index on port {c.port('http')} failed"],
                          "see the findings above and the journal (a server hung in loading answers nothing)"))
        return
    present = {str(m.get("name")) for m in index}
    for m in index:
        state = str(m.get("state") or "")
        if state == "READY":
            continue
        name, reason = str(m.get("name")), str(m.get("reason") or "")
        first = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
        line = f"model '{name}' is {state or 'not loaded'}: {first}"
        sig = signatures.match(reason)
        cfg = c.configs.get(name)
        if sig:
            d.add(_sig_finding("models", sig.id, sig.cause, [line[:600]], models=[name]))
        elif not state and name in c.config_errors:
            d.add(_sig_finding("models", "bad_config", BY_ID["bad_config"].cause, [line], models=[name]))
        elif cfg is not None and cfg.platform == "ensemble":
            steps = sorted({s.model_name for s in cfg.ensemble_scheduling.step})
            d.add(Finding("models", "error", f"ensemble '{name}' is not loaded: it waits on its step model(s) "
                          f"{', '.join(steps)}", [line], "fix the step models (findings above); the ensemble "
                          "loads with them", models=[name]))
        else:
            d.add(Finding("models", "error", f"model '{name}' is not ready", [line[:600]],
                          "read the model's reason and the journal", models=[name]))
    for name in sorted(set(c.ev.configs) - present):
        d.add(Finding("models", "error", f"model '{name}' is in the repository but not in the server's index",
                      [f"{name}/config.pbtxt on the host"], "see the journal for why it was skipped",
                      models=[name]))
    if not ready and not d.errors:
        d.add(Finding("models", "error", "the server says it is not ready", [f"GET /v2/health/ready on port "
                      f"{c.port('http')}"], "see the journal"))


CHECKS = (check_service, check_layout, check_backend_directory, check_stub, check_numpy, check_shm, check_ports,
          check_disk, check_gpus, check_repository, check_journal)


def server_of(conn, host, c: _Context) -> ServerClient:
    """The server the host runs, where it listens (through SSH forwards when bound to the host's loopback)."""
    return ServerClient(endpoint_for(host.address, c.server_vars(), conn), api_key=c.ev.values.get("api_key", ""))


# A cause whose failure Triton reports with misleading lines: the cause's signature, and what its lines read as.
_MISREAD_AS = {
    # a stub on a vendored libpython misses the host's stdlib: `No module named '_struct'` (or 'numpy') is not a
    # package to install
    "stub_vendored_libpython": ("stub_python_mismatch", "numpy_missing"),
    # a TLS file gRPC cannot use is reported as "Socket '0.0.0.0:8001' already in use" (server#5566)
    "grpc_tls_unusable": ("port_in_use",),
}


def _fold_misread_findings(d: Diagnosis) -> None:
    """Findings the log or the index misread (only those: a port another process really holds is found by
    check_ports) go into the finding of their real cause, as its evidence."""
    for cause_id, misread in _MISREAD_AS.items():
        cause = next((f for f in d.findings if f.signature == cause_id), None)
        if cause is None:
            continue
        for f in [f for f in d.findings if f.check in ("journal", "models") and f.signature in misread]:
            cause.evidence += [e for e in f.evidence if e not in cause.evidence]
            cause.models += [m for m in f.models if m not in cause.models]
            d.findings.remove(f)


def diagnose(conn, host, hostvars: dict, *, index_timeout: float = 3.0, server: ServerClient | None = None) -> Diagnosis:
    """Every check, from one round trip of host evidence plus the server's index; never raises for host problems.

    `server` is the run's client for this host when it has one (a deploy's); otherwise one is made from where
    the running server listens.
    """
    start = time.monotonic()
    ev = gather(conn, hostvars)
    c = _Context(ev, hostvars, host.address, host.name)
    d = Diagnosis(host.name)
    for check in CHECKS:
        check(c, d)
    ready, index, error = (False, None, "")
    if ev.service.get("ActiveState") == "active":
        try:
            ready, index, error = _server_index(server or server_of(conn, host, c), index_timeout)
        except TritonfleetError as exc:  # the SSH forward to a loopback-bound server could not be opened
            error = str(exc)
    check_models(c, d, index, ready, error)
    _fold_misread_findings(d)
    d.ready, d.index = ready, index or []
    d._context = c  # for fixes
    d.seconds = time.monotonic() - start
    return d


# ----------------------------------------------------------------------------------------------------------------
# fixes


def _install_missing_packages(conn, c: _Context, diagnosis: Diagnosis, progress) -> list[str]:
    """Install what the findings say is missing, each package chosen by its role (libpython, numpy)."""
    missing = {f.signature for f in diagnosis.findings if f.action == "packages"}
    pkgs = c.packages()
    if pkgs is None:
        return [f"cannot install the missing packages: no known package manager "
                f"(found '{c.ev.host.pkg_mgr or 'none'}')"]
    wanted = [name for sig_id, name in (("libpython_missing", pkgs.libpython), ("numpy_missing", pkgs.numpy))
              if sig_id in missing]
    if not wanted:
        return []
    progress(f"installing {', '.join(wanted)}")
    res = conn.run(install_command(c.ev.host.pkg_mgr, wanted), check=False, timeout=900)
    return [f"installed {', '.join(wanted)}" if res.ok else
            f"FAILED to install {', '.join(wanted)}: {(res.stderr or res.stdout).strip()[-300:]}"]


_SLASHED_FLAG = re.compile(r"(--backend-directory[= ]\"?)(/[^\s\"]*?)/+(?=[\s\"]|$)", re.M)


def apply_fixes(conn, host, hostvars: dict, diagnosis: Diagnosis, *, wait_s: float | None = None,
                progress=lambda msg: None) -> tuple[list[str], Diagnosis]:
    """Apply the safe fixes the findings ask for, restart, wait (bounded) for readiness and check again."""
    c: _Context = diagnosis._context
    actions = {f.action for f in diagnosis.findings if f.action and f.severity == "error"}
    done: list[str] = []
    if "packages" in actions:
        done += _install_missing_packages(conn, c, diagnosis, progress)
    if "chown_stub" in actions:
        res = conn.run(f"chown {q(c.user)}:{q(c.user)} {q(layout.STUB_PATH)}", check=False)
        done.append(f"chowned the stub to {c.user}" if res.ok else f"FAILED to chown the stub: {res.stderr.strip()}")
    if "backend_dir" in actions:
        paths = [p for p in [c.ev.service.get("FragmentPath", ""), *c.ev.service.get("DropInPaths", "").split()] if p]
        edited = []
        for path in paths:
            text = conn.run(f"cat {q(path)}", check=False).stdout
            new = _SLASHED_FLAG.sub(lambda m: m.group(1) + m.group(2), text)
            if new != text:
                conn.put_text(new, path)
                edited.append(path)
        done.append(f"dropped the trailing slash of --backend-directory in {', '.join(edited)}" if edited else
                    "found no --backend-directory with a trailing slash in the unit files to edit")
    unfixable = [f for f in diagnosis.errors if not f.action]
    if done or ("restart" in actions and not unfixable):  # a restart cannot cure what a person must fix
        svc = q(layout.SERVICE)
        res = conn.run(f"systemctl daemon-reload && systemctl reset-failed {svc} 2>/dev/null; "
                       f"systemctl restart {svc}", check=False, timeout=180)
        done.append(f"restarted {layout.SERVICE}" if res.ok else f"FAILED to restart: {res.stderr.strip()[-300:]}")
        timeout = float(wait_s if wait_s is not None else min(120, float(hostvars.get("triton_ready_timeout", 180))))
        progress(f"waiting up to {timeout:.0f} s for readiness")
        t0 = time.monotonic()
        ready, _ = server_of(conn, host, c).wait_ready(timeout_s=timeout)
        done.append(f"server {'ready' if ready else 'NOT ready'} after {time.monotonic() - t0:.1f} s")
    if not done:
        return [], diagnosis
    return done, diagnose(conn, host, hostvars)


# ----------------------------------------------------------------------------------------------------------------
# text


def render(d: Diagnosis, *, include_info: bool = True, indent: str = "  ") -> str:
    """The findings as text a person reads: severity, title, evidence, fix, link."""
    lines = []
    for f in d.sorted():
        if f.severity == "info" and not include_info:
            continue
        lines.append(f"{indent}{f.severity.upper():<7} [{f.check}] {f.title}")
        for e in f.evidence[:3]:
            lines.append(f"{indent}        evidence: {e}")
        if f.fix:
            auto = " (doctor --fix does this)" if f.action else ""
            lines.append(f"{indent}        fix: {f.fix}{auto}")
        if f.link:
            lines.append(f"{indent}        see: {f.link}")
    return "\n".join(lines)


def summary(d: Diagnosis) -> str:
    counts = {s: sum(1 for f in d.findings if f.severity == s) for s in SEVERITIES}
    state = "ready" if d.ready else "NOT ready"
    return (f"{d.host}: {counts['error']} error(s), {counts['warning']} warning(s), server {state} "
            f"({d.seconds:.1f} s)")


def diagnosis_for_outcome(ctx) -> tuple[str, dict]:
    """For a failed wait_ready/smoke: the diagnosis as text to append to the message and as data; never raises."""
    try:
        d = diagnose(ctx.conn, ctx.host, ctx.vars, server=ctx.server)
    except Exception as exc:  # a diagnosis must never hide the original failure
        return f"\ndiagnosis failed: {type(exc).__name__}: {exc}", {}
    text = render(d, include_info=False, indent="    ")
    if not text:
        return "", {"diagnosis": d.as_dict()}
    return "\ndiagnosis (invoke doctor):\n" + text, {"diagnosis": d.as_dict()}


# ----------------------------------------------------------------------------------------------------------------
# hosts


@dataclass
class HostReport:
    host: str
    before: Diagnosis | None = None
    fixes: list = field(default_factory=list)
    after: Diagnosis | None = None
    unreachable: str = ""
    error: str = ""       # the doctor itself could not finish on this host (reachable, but a command failed)

    @property
    def final(self) -> Diagnosis | None:
        return self.after or self.before

    @property
    def failed(self) -> bool:
        return bool(self.unreachable or self.error) or self.final is None or bool(self.final.errors)

    def as_dict(self) -> dict:
        return {"host": self.host, "ok": not self.failed, "unreachable": self.unreachable, "error": self.error,
                "diagnosis": self.before.as_dict() if self.before else None, "fixes": self.fixes,
                "after_fix": self.after.as_dict() if self.after else None}


def run_doctor(hosts: list, all_vars: dict, *, fix: bool = False, forks: int = 10,
               progress=lambda host, msg: None) -> list[HostReport]:
    """Diagnose (and with fix=True repair, holding the host lock) every host in parallel, one connection each."""
    def work(host, conn) -> HostReport:
        report = HostReport(host.name)
        hv = all_vars[host.name]
        progress(host.name, "gathering evidence")
        report.before = diagnose(conn, host, hv)
        if fix and any(f.action for f in report.before.errors):
            report.fixes, after = apply_fixes(conn, host, hv, report.before,
                                              progress=lambda msg: progress(host.name, msg))
            report.after = after if report.fixes else None
        return report

    results, _ = for_each_host(hosts, work, forks=forks, lock="doctor --fix" if fix else "")
    return [r.value or HostReport(r.host, unreachable=r.unreachable, error=r.error) for r in results]
