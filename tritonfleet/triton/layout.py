"""Everything tritonfleet knows about running Triton's Python backend on a bare host, in one place.

Layout, flags, the stub, packages and the defaults that keep users out of the traps listed in
`triton-on-bare-metal.md` (trailing slash on --backend-directory, missing numpy or libpython, a stub the
service user does not own, --exit-on-error restart loops).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from tritonfleet.engine import varspec
from tritonfleet.errors import TritonfleetError
from tritonfleet.triton import apikey, tls
from tritonfleet.paths import REPO_ROOT
from tritonfleet.triton.models import SHELL_SAFE, ModelRepositoryError, with_config_variant

SERVICE = "tritonserver"
UNIT_PATH = f"/etc/systemd/system/{SERVICE}.service"
# The compiled-in default root: the server finds its backends under /opt/tritonserver/backends with no flag.
TRITON_ROOT = "/opt/tritonserver"
DEFAULT_BACKEND_DIRECTORY = f"{TRITON_ROOT}/backends"
RELEASES_DIR = "/opt/tritonfleet/releases"
RELEASE_MARKER = ".tritonfleet-release"  # written last: a release folder without it is incomplete
STUB_NAME = "triton_python_backend_stub"
STUB_IN_RELEASE = f"backends/python/{STUB_NAME}"
PYTHON_BACKEND_FILES = ("backends/python/libtriton_python.so", "backends/python/triton_python_backend_utils.py")

# Inventory vars and their defaults (lowest precedence, like an Ansible role's defaults/).
DEFAULT_VARS = {
    "triton_user": "triton",
    "model_repository": str(REPO_ROOT / "examples" / "models"),
    "triton_model_repository_path": "/srv/tritonfleet/models",
    "triton_http_port": 8000,
    "triton_grpc_port": 8001,
    "triton_metrics_port": 8002,
    "triton_http_address": "0.0.0.0",
    "triton_grpc_address": "0.0.0.0",
    "triton_metrics_address": "0.0.0.0",
    "triton_model_control_mode": "none",
    "triton_log_verbose": 0,
    "triton_backend_config": {},  # e.g. {python: {shm-default-byte-size: 16777216}}
    "triton_backend_directory": "",  # unset: the compiled-in default, which is what we install
    "triton_exit_on_error": False,
    "triton_strict_readiness": True,
    "triton_extra_args": [],
    "triton_ready_timeout": 180,
    "triton_keep_releases": 3,
    "triton_model_config_name": "",  # unset: every model's config.pbtxt
    "triton_restricted_apis": list(apikey.DEFAULT_RESTRICTED_APIS),  # only callers with the host's key reach them
    "triton_api_key": "",  # unset: generated on the host at the first deploy (triton_api_key module)
    "triton_allow_metrics": True,
    "triton_allow_gpu_metrics": True,  # Triton's defaults; false: --allow-gpu-metrics=false
    "triton_allow_cpu_metrics": True,
    **tls.DEFAULT_VARS,  # gRPC TLS: PEM files on the control machine, unset (plaintext gRPC)
}

MODEL_CONTROL_MODES = ("none", "poll", "explicit")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
BIND_ADDRESS = re.compile(r"[A-Za-z0-9_.:%-]+")
PACKAGE_NAME = re.compile(r"[A-Za-z0-9][^\s\x00-\x1f\x7f]*")
CONFIG_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a file name stem: <model>/configs/<name>.pbtxt

# Paths that reach `bash -c` unquoted inside Triton's Python backend (the model path, the stub under the backend
# directory): spaces break every model, quotes, ';' and '$(...)' run as commands. Read without a trailing slash
# (see normalize_backend_directory for why that matters).
_HOST_PATH = varspec.absolute_path(SHELL_SAFE, "letters, digits and _ . + @ = , : % / - (Triton's Python backend "
                                               "passes it unquoted to `bash -c`)")
_ADDRESS = varspec.text(BIND_ADDRESS, "an IP address or host name to bind to, e.g. 0.0.0.0 or 127.0.0.1",
                        "not an address")
_SECONDS = varspec.whole_number(1, allowed="a whole number of seconds, 1 or more")

# The type of every var in DEFAULT_VARS, and of triton_packages (engine/varspec.py): each is read into its type
# before anything uses it, so `triton_exit_on_error: "false"` is False and `triton_http_port: abc` is refused.
VAR_TYPES = {
    "triton_user": varspec.text(USER_NAME, "a system user name: lower-case letters, digits, '_' and '-', "
                                           "starting with a letter or '_', at most 32 (e.g. triton)",
                                "not a valid system user name"),
    "model_repository": varspec.text(allowed="a folder on this machine"),
    "triton_model_repository_path": _HOST_PATH,
    "triton_http_port": varspec.PORT,
    "triton_grpc_port": varspec.PORT,
    "triton_metrics_port": varspec.PORT,
    "triton_http_address": _ADDRESS,
    "triton_grpc_address": _ADDRESS,
    "triton_metrics_address": _ADDRESS,
    "triton_model_control_mode": varspec.choice(*MODEL_CONTROL_MODES),
    "triton_log_verbose": varspec.whole_number(0, allowed="a whole number, 0 (off) or more"),
    "triton_backend_config": varspec.NAMED_SETTINGS,
    "triton_backend_directory": varspec.optional(_HOST_PATH),
    "triton_exit_on_error": varspec.BOOLEAN,
    "triton_strict_readiness": varspec.BOOLEAN,
    "triton_extra_args": varspec.ARGUMENTS,
    "triton_ready_timeout": _SECONDS,
    "triton_keep_releases": varspec.whole_number(1, allowed="a whole number, 1 (the live release) or more"),
    "triton_model_config_name": varspec.optional(varspec.text(
        CONFIG_NAME, "a config name of letters, digits, '_', '.' and '-' (selects <model>/configs/<name>.pbtxt "
                     "where a model has one), e.g. h100", "not a config file name")),
    "triton_restricted_apis": varspec.text_list(varspec.choice(*apikey.RESTRICTABLE_APIS)),
    "triton_api_key": varspec.optional(varspec.text(
        apikey.KEY_PATTERN, "16 to 256 letters, digits, '_' and '-'", "not a usable API key")),
    "triton_allow_metrics": varspec.BOOLEAN,
    "triton_allow_gpu_metrics": varspec.BOOLEAN,
    "triton_allow_cpu_metrics": varspec.BOOLEAN,
    **tls.VAR_TYPES,
    # a list only: `[]` manages the packages yourself (fleet/run.py reads it as given)
    "triton_packages": varspec.text_list(varspec.text(PACKAGE_NAME, "package names", "not a package name")),
}

# rsync's quick check (path, size, whole-second mtime of every file) as one digest, run in a repository folder.
MANIFEST_COMMAND = (r"find . -name __pycache__ -prune -o \( -type f -o -type l \) -printf '%P\t%s\t%T@\n' "
                    r"| sed 's/\.[0-9]*$//' | LC_ALL=C sort | sha256sum | cut -d' ' -f1")


def is_loopback(address: str) -> bool:
    """A bind address only the host itself can reach."""
    return address in ("localhost", "::1") or address.startswith("127.")


def normalize_backend_directory(path: str) -> str:
    """A user's --backend-directory without trailing slashes.

    The Python backend compares `<backend-dir> + "/python"` with the path the core found as strings; a
    trailing slash makes them differ and every Python model fails with `No module named 'model'`
    (triton-inference-server/server#6730, #7410).
    """
    path = str(path).strip()
    return path.rstrip("/") or "/"


def server_args(v: dict) -> list[str]:
    """The tritonserver command line for a host's vars, read into their types (VAR_TYPES): only flags that
    differ from safe defaults."""
    mode = v["triton_model_control_mode"]
    args = [
        f"--model-repository={v['triton_model_repository_path']}",
        f"--model-control-mode={mode}",
        f"--http-port={v['triton_http_port']}",
        f"--grpc-port={v['triton_grpc_port']}",
        f"--metrics-port={v['triton_metrics_port']}",
        f"--http-address={v['triton_http_address']}",
        f"--grpc-address={v['triton_grpc_address']}",
        f"--metrics-address={v['triton_metrics_address']}",
        # A model that fails to load is reported UNAVAILABLE with its reason instead of a restart loop.
        f"--exit-on-error={str(v['triton_exit_on_error']).lower()}",
        f"--strict-readiness={str(v['triton_strict_readiness']).lower()}",
        f"--log-verbose={v['triton_log_verbose']}",
    ]
    if mode == "explicit":
        args.append("--load-model=*")
    if not v["triton_allow_metrics"]:
        args.append("--allow-metrics=false")
    for kind in ("gpu", "cpu"):
        if not v[f"triton_allow_{kind}_metrics"]:
            args.append(f"--allow-{kind}-metrics=false")
    args += tls.server_args(v)
    if v["triton_backend_directory"]:
        args.append(f"--backend-directory={v['triton_backend_directory']}")
    if v["triton_model_config_name"]:
        args.append(f"--model-config-name={v['triton_model_config_name']}")
    for backend, settings in v["triton_backend_config"].items():
        for key, value in settings.items():
            args.append(f"--backend-config={backend},{key}={value}")
    return args + v["triton_extra_args"]


@dataclass(frozen=True)
class HostPackages:
    """The packages a host needs, by role: their names differ between package managers."""
    libpython: str  # the shared libpython the stub links
    numpy: str  # numpy for the host's python3: the stub imports it at start
    rsync: str  # model sync

    def names(self) -> list[str]:
        return [self.libpython, self.numpy, self.rsync]


def host_packages(pkg_mgr: str, python_version: str) -> HostPackages:
    """The host's names for the shared libpython, numpy and rsync, for the facts' packages and the doctor's fix."""
    if pkg_mgr == "apt":
        return HostPackages(f"libpython{python_version}", "python3-numpy", "rsync")
    if pkg_mgr in ("dnf", "yum"):
        return HostPackages("python3-libs", "python3-numpy", "rsync")
    if pkg_mgr == "zypper":
        return HostPackages(f"libpython{python_version.replace('.', '_')}-1_0", "python3-numpy", "rsync")
    raise TritonfleetError(
        f"no known package manager on the host (found '{pkg_mgr or 'none'}')",
        hint=f"install the shared libpython{python_version}, numpy for python3 and rsync yourself, "
             "then set `triton_packages: []` in the inventory")


def python_packages(pkg_mgr: str, python_version: str) -> list[str]:
    """`host_packages` as the list of names a playbook's `packages` step installs (`triton_packages`)."""
    return host_packages(pkg_mgr, python_version).names()


def release_dir(release_id: str) -> str:
    return str(PurePosixPath(RELEASES_DIR) / release_id)


def preflight_problems(facts, bundle, repository, server_args: list[str] = ()) -> list[str]:
    """Reasons this host cannot run this bundle and repository, found before anything is changed.

    `server_args` are the host's tritonserver flags: `--model-config-name` selects the configs checked here.
    """
    problems = []
    if facts.init != "systemd":
        problems.append(f"PID 1 is '{facts.init}', not systemd: tritonfleet runs Triton as a systemd service")
    if not facts.python_version:
        problems.append("the host has no python3: the Python backend stub embeds the host's Python "
                        "(install python3 first)")
    elif facts.python_version not in bundle.python_versions:
        problems.append(f"the host's python3 is {facts.python_version} but bundle {bundle.bundle_id} has stubs "
                        f"only for {', '.join(bundle.python_versions)}: use a bundle with a {facts.python_version} "
                        "stub or a host with one of those Pythons")
    for m in repository.models.values():
        if m.execution_env_python and facts.python_version and m.execution_env_python != facts.python_version:
            problems.append(f"model {m.name} runs in a packed Python {m.execution_env_python} environment "
                            f"(EXECUTION_ENV_PATH) but the stub is for the host's Python {facts.python_version}: "
                            "pack the environment with the host's Python")
    config_name = (flag_values(list(server_args), "--model-config-name") or [""])[-1]
    if config_name:
        try:
            repository = with_config_variant(repository, config_name, bundle.backends)
        except ModelRepositoryError as exc:
            return problems + [f"--model-config-name={config_name}: {p}" for p in exc.problems]
    gpu_models = sorted(m.name for m in repository.models.values() if m.uses_gpu())
    if gpu_models and not facts.gpus:
        problems.append(f"model(s) {', '.join(gpu_models)} ask for KIND_GPU instances but the host has no GPU "
                        "(nvidia-smi found none): use KIND_CPU for them or deploy to a GPU host")
    elif gpu_models:
        problems += _placement_problems(facts.gpus, repository, config_name, _min_compute_capability(server_args))
        problems += _driver_problems(facts.gpus, gpu_models)
    return problems


def _min_compute_capability(server_args) -> float:
    """The compute capability below which Triton ignores a GPU: 6.0 (TRITON_MIN_COMPUTE_CAPABILITY, core r24.10
    CMakeLists.txt) unless --min-supported-compute-capability says otherwise."""
    given = flag_values(list(server_args), "--min-supported-compute-capability")
    try:
        return float(given[-1]) if given else MIN_COMPUTE_CAPABILITY
    except ValueError:
        return MIN_COMPUTE_CAPABILITY


def _gpu_groups(model):
    """The KIND_GPU instance groups of a model's config (none for a model known only by its kinds)."""
    return [g for g in (model.config.instance_group if model.config is not None else ()) if g.kind == KIND_GPU]


def _placement_problems(gpus, repository, config_name: str, min_cc: float) -> list[str]:
    """KIND_GPU instance groups naming GPUs Triton will not use: absent from the host, or below its minimum compute
    capability. Triton refuses such a model ("instance group ... specifies invalid or unsupported gpu id N",
    core r24.10 model_config_utils.cc ValidateInstanceGroup); a group that names no GPU uses every usable one."""
    by_index = {g.index: g for g in gpus}
    usable = sorted(i for i, g in by_index.items() if not g.compute_cap or float(g.compute_cap) >= min_cc)
    have = f"the host's GPUs are {', '.join(g.describe() for g in gpus)}"
    fix = ("name only GPUs the host has in the model's instance_group `gpus` (or leave `gpus` out to use every GPU), "
           "or give hosts of another kind their own configs/<name>.pbtxt and set triton_model_config_name")
    config = f"configs/{config_name}.pbtxt" if config_name else "config.pbtxt"
    problems = []
    for model in repository.models.values():
        for group in _gpu_groups(model):
            named = list(group.gpus)
            absent = [i for i in named if i not in by_index]
            too_old = [i for i in named if i in by_index and i not in usable]
            where = f"model {model.name}'s instance group {group.name or '(unnamed)'} ({config} of the model)"
            if absent:
                problems.append(f"{where} names GPU(s) {', '.join(map(str, absent))} but {have}: {fix}")
            if too_old:
                problems.append(f"{where} names GPU(s) {', '.join(map(str, too_old))}, below the minimum compute "
                                f"capability {min_cc:g} Triton uses ({have}): {fix}")
            if not named and not usable:
                problems.append(f"{where} asks for every GPU but none reaches the minimum compute capability "
                                f"{min_cc:g} Triton uses ({have}): use KIND_CPU or a newer GPU")
    return problems


def _driver_problems(gpus, gpu_models: list[str]) -> list[str]:
    """GPUs whose driver cannot run the bundle's CUDA runtime, for KIND_GPU models."""
    old = [g for g in gpus if g.driver and not driver_is_new_enough(g.driver)]
    if not old:
        return []
    return [f"model(s) {', '.join(gpu_models)} ask for KIND_GPU instances but the host's NVIDIA driver "
            f"{', '.join(sorted({g.driver for g in old}))} is older than {MIN_DRIVER_VERSION}, the oldest that runs "
            f"the bundle's CUDA {BUNDLE_CUDA_VERSION} runtime (CUDA 12.x minor version compatibility, "
            f"{CUDA_COMPATIBILITY_DOC}): install driver {FULL_FEATURE_DRIVER_VERSION} or newer (CUDA "
            f"{BUNDLE_CUDA_VERSION}'s own; at least {MIN_DRIVER_VERSION}), or use KIND_CPU for these models"]


def driver_note(gpus) -> str:
    """A note for drivers that run the bundle's CUDA only through minor version compatibility ("" otherwise)."""
    partial = sorted({g.driver for g in gpus if g.driver and driver_is_new_enough(g.driver)
                      and not driver_is_new_enough(g.driver, FULL_FEATURE_DRIVER_VERSION)})
    if not partial:
        return ""
    return (f"driver {', '.join(partial)} runs CUDA {BUNDLE_CUDA_VERSION} by minor version compatibility "
            f"(CUDA {BUNDLE_CUDA_VERSION}'s own driver is {FULL_FEATURE_DRIVER_VERSION}; {CUDA_COMPATIBILITY_DOC})")


# numpy 1.26, the last numpy 1.x, has builds for CPython 3.9 to 3.12 only: a newer Python can only have numpy 2.
NUMPY1_BEYOND_PYTHON = "3.13"


def platform_problems(facts, bundle) -> list[str]:
    """Reasons this host cannot run this bundle's binaries at all, from what the bundle recorded when it was built
    (bundle.Platform) against the facts; a value either side does not know is not checked."""
    need, problems = bundle.platform, []
    if need.machine and facts.architectures and need.machine not in facts.architectures:
        problems.append(f"the host's C library is for {', '.join(facts.architectures)} but bundle {bundle.bundle_id} "
                        f"is built for {need.machine} (bin/tritonserver): it would fail with 'Exec format error'; "
                        f"deploy to an {need.machine} host, or build a bundle from a Triton tree for "
                        f"{facts.architectures[0]} (`invoke bundle --source DIR`, e.g. the NGC container's "
                        "/opt/tritonserver for that architecture)")
    if need.glibc and facts.glibc_version and not at_least(facts.glibc_version, need.glibc):
        problems.append(f"the host's glibc is {facts.glibc_version} but bundle {bundle.bundle_id} needs GLIBC_"
                        f"{need.glibc} ({need.glibc_by}): tritonserver would fail with \"version `GLIBC_{need.glibc}' "
                        f"not found\"; use a host with glibc {need.glibc} or newer (Debian 12, Ubuntu 22.04) or a "
                        "Triton tree built for an older glibc (`invoke bundle --source DIR`)")
    if need.glibcxx and facts.glibcxx_version and not at_least(facts.glibcxx_version, need.glibcxx):
        problems.append(f"the host's libstdc++ provides GLIBCXX_{facts.glibcxx_version} but bundle {bundle.bundle_id} "
                        f"needs GLIBCXX_{need.glibcxx} ({need.glibcxx_by}): tritonserver would fail with "
                        f"\"version `GLIBCXX_{need.glibcxx}' not found\"; use a host whose system libstdc++ is as new "
                        f"(GCC 12's libstdc++.so.6.0.30 for GLIBCXX_3.4.30: Debian 12, Ubuntu 22.04)")
    numpy2 = ""
    if facts.numpy_version and at_least(facts.numpy_version, "2"):
        numpy2 = f"the host's python3 finds numpy {facts.numpy_version} ({facts.numpy_path})"
    elif not facts.numpy_version and facts.python_version and at_least(facts.python_version, NUMPY1_BEYOND_PYTHON):
        numpy2 = (f"the host's python3 is {facts.python_version}, for which numpy exists only as 2.x (numpy 1.26, the "
                  f"last 1.x, supports Python up to 3.12), so the numpy the packages step installs is numpy 2")
    if need.numpy2 is False and numpy2:
        problems.append(f"{numpy2} but the Python "
                        f"backend of bundle {bundle.bundle_id} (Triton {bundle.triton_version}) was built before numpy "
                        "2 support (it came with Triton 2.52, python_backend PR #384): models would load and every "
                        "inference fail ('output tensor shape does not match size of output'); give python3 a numpy "
                        "1.x, or build a bundle from a Triton 2.52 or newer tree (`invoke bundle --source DIR`)")
    libpython = need.vendored_libpython(facts.python_version)
    if libpython:
        host_lib = f"libpython{facts.python_version}.so.1.0"
        problems.append(f"bundle {bundle.bundle_id}'s stub for Python {facts.python_version} links {libpython}, a "
                        f"libpython shipped in the bundle's lib/, not the host's {host_lib}: it does not find the "
                        "host's standard library (every model fails with \"No module named '_struct'\" or "
                        f"'numpy'); relink the stub to the host's (`patchelf --replace-needed {libpython} {host_lib} "
                        f"python_backend_stubs/{facts.python_version}/{STUB_NAME}` in the Triton tree, then "
                        "`invoke bundle --source DIR`) "
                        "or use a host whose python3 the bundle has a stub for that links the host's libpython")
    return problems


# ---- Knowledge the doctor (`invoke doctor`) checks hosts against -------------------------------------------
LIB_DIR = f"{TRITON_ROOT}/lib"  # the unit's LD_LIBRARY_PATH: the stub finds libcudart there, not by RPATH
PYTHON_BACKEND_DIR = f"{DEFAULT_BACKEND_DIRECTORY}/python"
STUB_PATH = f"{PYTHON_BACKEND_DIR}/{STUB_NAME}"
SERVER_BINARY = f"{TRITON_ROOT}/bin/tritonserver"
# Python backend shared memory (python_backend#291: defaults lowered from 64 MiB to 1 MiB in 23.09). Each model
# instance's stub gets its own region of shm-default-byte-size in /dev/shm, grown by shm-growth-byte-size.
PYTHON_SHM_DEFAULT_BYTE_SIZE = 1 << 20
PYTHON_SHM_GROWTH_BYTE_SIZE = 1 << 20
# The bundle (Triton 2.51.0 / r24.10) ships the CUDA 12.6 runtime; CUDA 12.x minor-version compatibility needs a
# driver >= 525.60.13 (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html).
BUNDLE_CUDA_VERSION = "12.6"
MIN_DRIVER_VERSION = "525.60.13"
# CUDA 12.6 GA's own minimum (CUDA Toolkit release notes, table "CUDA Toolkit and Corresponding Driver Versions"):
# below it, and from MIN_DRIVER_VERSION, CUDA 12.6 runs by minor version compatibility, without PTX JIT of newer code.
FULL_FEATURE_DRIVER_VERSION = "560.28.03"
CUDA_COMPATIBILITY_DOC = "https://docs.nvidia.com/deploy/cuda-compatibility/"
MIN_COMPUTE_CAPABILITY = 6.0  # Triton ignores GPUs below it unless --min-supported-compute-capability says otherwise
KIND_GPU = 1  # inference.ModelInstanceGroup.Kind
PORT_FLAGS = {"http": ("--http-port", "triton_http_port"), "grpc": ("--grpc-port", "triton_grpc_port"),
              "metrics": ("--metrics-port", "triton_metrics_port")}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
FREE_DISK_MIN_KB = 2 * 1024 * 1024  # a release needs about 1 GiB unpacked; keep room for one more beside it


def flag_values(argv: list[str], flag: str) -> list[str]:
    """Every value given to `flag` in a tritonserver argv (`--flag=value` or `--flag value`)."""
    values = []
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1:])
        elif arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
    return values


def python_shm_settings(argv: list[str]) -> dict:
    """shm-default-byte-size / shm-growth-byte-size the Python backend uses for this argv (flags override defaults)."""
    settings = {"shm-default-byte-size": PYTHON_SHM_DEFAULT_BYTE_SIZE,
                "shm-growth-byte-size": PYTHON_SHM_GROWTH_BYTE_SIZE}
    for value in flag_values(argv, "--backend-config"):
        backend, _, setting = value.partition(",")
        key, _, number = setting.partition("=")
        if backend == "python" and key in settings and number.strip().isdigit():
            settings[key] = int(number)
    return settings


def at_least(version: str, minimum: str) -> bool:
    """Dotted versions compared part by part as numbers: "2.36" >= "2.35", "535.104.05" >= "525.60.13"."""
    def parts(v: str) -> tuple:
        return tuple(int(p) if p.isdigit() else 0 for p in v.strip().split("."))
    return parts(version) >= parts(minimum)


def driver_is_new_enough(driver: str, minimum: str = MIN_DRIVER_VERSION) -> bool:
    return at_least(driver, minimum)
