"""Host facts, gathered in one round trip per host and parsed once.

The script is the generic probes of `engine/evidence.py` (OS, PID 1, Python, numpy, packages and the C library,
libstdc++, GPUs, disks, the unit) followed by the Triton ones below; the doctor builds its evidence script from the
same probes.

Modules compare these with the desired state; a module that changes the host updates the facts it
changed, so later steps of the same run see the new state without asking the host again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tritonfleet import secrets
from tritonfleet.engine import evidence
from tritonfleet.triton import apikey, layout, releases

# What a deploy needs beyond the generic probes: the user, releases, stub, models, history, unit and server argv
# ($main_pid from the systemd_unit fragment). Performance-critical (the no-op deploy's whole cost is a few
# commands per host): shell builtins wherever they do.
_TRITON_PROBES = r"""
getent passwd "$TF_USER" >/dev/null 2>&1 && echo "user_exists=yes"
echo "live_release=$(readlink "$TF_ROOT" 2>/dev/null)"
[ -e "$TF_ROOT" ] && [ ! -L "$TF_ROOT" ] && echo "root_is_unmanaged=yes"
for d in "$TF_RELEASES"/*/; do
  [ -f "$d$TF_MARKER" ] && { d=${d%/}; echo "release=${d##*/}"; }
done
stub="$TF_ROOT/$TF_STUB"
if [ -n "$python_version" ] && [ -e "$stub" ]; then
  echo "live_stub=$(stat -c '%U %a' "$stub")$(cmp -s "$TF_ROOT/python_backend_stubs/$python_version/$TF_STUB_NAME" "$stub" && echo ' same')"
fi
echo "live_models=$(readlink "$TF_MODELS" 2>/dev/null)"
if [ -d "$TF_MODELS/" ]; then echo "live_models_manifest=$(cd "$TF_MODELS/" && sh -c "$TF_MANIFEST")"; fi
[ -e "$TF_MODELS" ] && [ ! -L "$TF_MODELS" ] && echo "models_is_unmanaged=yes"
for d in "$TF_STORE"/*/; do [ -d "$d" ] && { d=${d%/}; echo "model_repo=${d##*/}"; }; done
if [ -f "$TF_HISTORY" ]; then
  while read -r line || [ -n "$line" ]; do echo "history=$line"; done <"$TF_HISTORY"
fi
unit_sha256=
[ -f "$TF_UNIT" ] && { set -- $(sha256sum "$TF_UNIT" 2>/dev/null); unit_sha256=$1; }
echo "unit_sha256=$unit_sha256"
if [ -n "$main_pid" ] && [ "$main_pid" != 0 ]; then
  echo "server_cmdline=$(tr '\0\n' '  ' < /proc/$main_pid/cmdline)"
fi
"""

SERVICE_PROPERTIES = ("ActiveState", "SubState", "MainPID", "UnitFileState", "NRestarts", "NeedDaemonReload",
                      "LoadState", "ActiveEnterTimestamp")

_SCRIPT = evidence.script(
    evidence.OS_RELEASE, evidence.INIT, evidence.PYTHON_VERSION, evidence.NUMPY, evidence.PKG_MGR,
    evidence.INSTALLED_PACKAGES, evidence.LIBSTDCXX, evidence.gpus(), evidence.DISKS,
    evidence.systemd_unit(layout.SERVICE, SERVICE_PROPERTIES), _TRITON_PROBES, apikey.READ_COMMAND,
)


@dataclass
class Facts:
    os_id: str = ""
    os_version: str = ""
    os_name: str = ""
    init: str = ""
    python_version: str = ""
    pkg_mgr: str = ""
    packages: set = field(default_factory=set)
    architectures: list = field(default_factory=list)  # of the installed C libraries ("x86_64"), from dpkg or rpm
    glibc_version: str = ""  # "2.36"; "" where neither dpkg nor rpm names the C library
    glibcxx_version: str = ""  # "3.4.30": the newest GLIBCXX_ of the system libstdc++
    numpy_version: str = ""  # of the first numpy python3 finds in the system's site folders ("" when none)
    numpy_path: str = ""  # its metadata folder
    gpus: list = field(default_factory=list)
    disk_free_kb: int = 0
    shm_kb: int = 0
    user_exists: bool = False
    live_release: str = ""  # target of /opt/tritonserver
    root_is_unmanaged: bool = False  # /opt/tritonserver is a real folder tritonfleet did not make
    releases: list = field(default_factory=list)  # complete Triton trees on the host (bundle ids)
    live_stub: str = ""  # "<owner> <mode>[ same]" of the live release's stub ("same": it is the host Python's)
    live_models: str = ""  # target of the model repository symlink
    live_models_manifest: str = ""  # quick-check digest of the live repository (paths, sizes, mtimes)
    models_is_unmanaged: bool = False  # the model path is a real folder tritonfleet did not make
    model_repos: list = field(default_factory=list)  # model repositories kept on the host (digests)
    history: list = field(default_factory=list)  # releases.Release, newest last
    unit_sha256: str = ""
    service: dict = field(default_factory=dict)  # ActiveState, SubState, MainPID, UnitFileState, ...
    server_cmdline: str = ""  # the running tritonserver's command line
    service_stale: bool = False  # set once this run changed the unit or the service: ask systemd again
    api_key: str = field(default="", repr=False)  # the host's key for Triton's restricted APIs ("" when none)

    @property
    def server_mode(self) -> str:
        """The model control mode of the running server ("" when none runs)."""
        if not self.server_cmdline:
            return ""
        for arg in self.server_cmdline.split():
            if arg.startswith("--model-control-mode="):
                return arg.split("=", 1)[1]
        return "none"

    def as_dict(self) -> dict:
        data = asdict(self)
        data["packages"] = sorted(self.packages)
        del data["api_key"]  # a secret: the vars and reports never carry it
        return data

    @property
    def live(self):
        """The release serving now, if tritonfleet switched to it."""
        return self.history[-1] if self.history else None

    def summary(self) -> dict:
        """The facts worth showing to a person or a JSON report (no package list)."""
        data = self.as_dict()
        del data["packages"]
        return data


def gather_command(triton_user: str, models_path: str) -> str:
    return evidence.command(_SCRIPT, {
        "TF_USER": triton_user, "TF_MODELS": models_path, "TF_STORE": releases.models_store(models_path),
        "TF_HISTORY": releases.HISTORY_FILE, "TF_STUB": layout.STUB_IN_RELEASE, "TF_STUB_NAME": layout.STUB_NAME,
        "TF_MANIFEST": layout.MANIFEST_COMMAND, "TF_ROOT": layout.TRITON_ROOT, "TF_RELEASES": layout.RELEASES_DIR,
        "TF_MARKER": layout.RELEASE_MARKER, "TF_UNIT": layout.UNIT_PATH,
    })


def parse_facts(output: str) -> Facts:
    """The facts in the probes' output; the API keys found (the key file's, the running server's) are registered
    as secrets before anything can print them."""
    out = evidence.parse_output(output)
    secrets.register([out.value("api_key"), *apikey.keys_in_cmdline(out.value("server_cmdline"))])
    host = evidence.parse_host(out)
    return Facts(
        os_id=host.os_id, os_version=host.os_version, os_name=host.os_name, init=host.init,
        python_version=host.python_version, pkg_mgr=host.pkg_mgr, packages=host.packages,
        architectures=host.architectures, glibc_version=host.glibc_version, glibcxx_version=host.glibcxx_version,
        numpy_version=host.numpy_version, numpy_path=host.numpy_path, gpus=host.gpus,
        disk_free_kb=host.disk_free_kb or 0, shm_kb=host.shm_kb or 0, service=host.service,
        user_exists=out.value("user_exists") == "yes",
        live_release=out.value("live_release"), root_is_unmanaged=out.value("root_is_unmanaged") == "yes",
        releases=out.every("release"), live_stub=out.value("live_stub"),
        live_models=out.value("live_models"), live_models_manifest=out.value("live_models_manifest"),
        models_is_unmanaged=out.value("models_is_unmanaged") == "yes", model_repos=out.every("model_repo"),
        history=[r for line in out.every("history") for r in releases.parse_history(line)],
        unit_sha256=out.value("unit_sha256"), server_cmdline=out.value("server_cmdline"),
        api_key=out.value("api_key"),
    )


def gather_facts(conn, triton_user: str, models_path: str) -> Facts:
    return parse_facts(conn.run(gather_command(triton_user, models_path), timeout=60).stdout)
