"""Host facts, gathered in one round trip per host and parsed once.

Modules compare these with the desired state; a module that changes the host updates the facts it
changed, so later steps of the same run see the new state without asking the host again.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field

from tritonfleet.triton import releases
from tritonfleet.triton import layout

# POSIX sh, no bashisms: one `key=value` line per fact, multi-valued facts repeated.
_SCRIPT = r"""
. /etc/os-release 2>/dev/null
echo "os_id=${ID:-unknown}"
echo "os_version=${VERSION_ID:-unknown}"
echo "os_name=${PRETTY_NAME:-unknown}"
read -r init </proc/1/comm 2>/dev/null; echo "init=$init"
# python3 -> python3.N names the version without starting Python; anything else is asked
py=$(readlink -f "$(command -v python3)" 2>/dev/null); py=${py##*/python}
case $py in 3.[0-9]|3.[0-9][0-9]) ;; *) py=$(python3 -I -S -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null);; esac
echo "python_version=$py"
for m in apt-get dnf yum zypper; do command -v $m >/dev/null 2>&1 && { echo "pkg_mgr=${m%-get}"; break; }; done
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' 2>/dev/null | awk '$2 ~ /^ii/ {print "package=" $1}'
elif command -v rpm >/dev/null 2>&1; then
  rpm -qa --qf 'package=%{NAME}\n' 2>/dev/null
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader,nounits 2>/dev/null \
    | sed 's/^/gpu=/'
fi
df -Pk /opt /dev/shm 2>/dev/null | awk 'NR==2 {print "disk_free_kb=" $4} NR==3 {print "shm_kb=" $2}'
getent passwd "$TF_USER" >/dev/null 2>&1 && echo "user_exists=yes"
echo "live_release=$(readlink "$TF_ROOT" 2>/dev/null)"
[ -e "$TF_ROOT" ] && [ ! -L "$TF_ROOT" ] && echo "root_is_unmanaged=yes"
for d in "$TF_RELEASES"/*/; do
  [ -f "$d$TF_MARKER" ] && { d=${d%/}; echo "release=${d##*/}"; }
done
stub="$TF_ROOT/$TF_STUB"
if [ -n "$py" ] && [ -e "$stub" ]; then
  echo "live_stub=$(stat -c '%U %a' "$stub")$(cmp -s "$TF_ROOT/python_backend_stubs/$py/$TF_STUB_NAME" "$stub" && echo ' same')"
fi
echo "live_models=$(readlink "$TF_MODELS" 2>/dev/null)"
if [ -d "$TF_MODELS/" ]; then echo "live_models_manifest=$(cd "$TF_MODELS/" && sh -c "$TF_MANIFEST")"; fi
[ -e "$TF_MODELS" ] && [ ! -L "$TF_MODELS" ] && echo "models_is_unmanaged=yes"
for d in "$TF_STORE"/*/; do [ -d "$d" ] && { d=${d%/}; echo "model_repo=${d##*/}"; }; done
[ -f "$TF_HISTORY" ] && sed 's/^/history=/' "$TF_HISTORY"
unit_sha256=
[ -f "$TF_UNIT" ] && { set -- $(sha256sum "$TF_UNIT" 2>/dev/null); unit_sha256=$1; }
echo "unit_sha256=$unit_sha256"
# one systemctl call: its answer is read line by line by the shell itself
pid= since=
service=$(systemctl show "$TF_SERVICE" -p ActiveState -p SubState -p MainPID -p UnitFileState -p NRestarts \
  -p NeedDaemonReload -p LoadState -p ActiveEnterTimestamp 2>/dev/null)
while IFS='=' read -r key value; do
  case $key in
    '') continue ;;
    MainPID) pid=$value ;;
    ActiveEnterTimestamp) since=$value; continue ;;
  esac
  echo "service_$key=$value"
done <<SERVICE
$service
SERVICE
if [ -n "$pid" ] && [ "$pid" != 0 ]; then echo "server_cmdline=$(tr '\0\n' '  ' < /proc/$pid/cmdline)"; fi
if [ -n "$since" ]; then echo "service_UptimeSeconds=$(( $(date +%s) - $(date -d "$since" +%s) ))"; fi
"""


@dataclass
class Gpu:
    index: int
    name: str
    driver: str
    memory_mib: int


@dataclass
class Facts:
    os_id: str = ""
    os_version: str = ""
    os_name: str = ""
    init: str = ""
    python_version: str = ""
    pkg_mgr: str = ""
    packages: set = field(default_factory=set)
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
    env = {
        "TF_USER": triton_user, "TF_MODELS": models_path, "TF_STORE": releases.models_store(models_path),
        "TF_HISTORY": releases.HISTORY_FILE, "TF_STUB": layout.STUB_IN_RELEASE, "TF_STUB_NAME": layout.STUB_NAME,
        "TF_MANIFEST": layout.MANIFEST_COMMAND, "TF_ROOT": layout.TRITON_ROOT, "TF_RELEASES": layout.RELEASES_DIR,
        "TF_MARKER": layout.RELEASE_MARKER, "TF_UNIT": layout.UNIT_PATH, "TF_SERVICE": layout.SERVICE,
    }
    assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"{assign} sh -c {shlex.quote(_SCRIPT)}"


def parse_facts(output: str) -> Facts:
    facts = Facts()
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if key == "package":
            facts.packages.add(value.split(":")[0])
        elif key == "gpu":
            parts = [p.strip() for p in value.split(",")]
            if len(parts) == 4:
                facts.gpus.append(Gpu(int(parts[0]), parts[1], parts[2], int(float(parts[3] or 0))))
        elif key == "release":
            facts.releases.append(value)
        elif key == "model_repo":
            facts.model_repos.append(value)
        elif key == "history":
            facts.history += releases.parse_history(value)
        elif key.startswith("service_"):
            facts.service[key[len("service_"):]] = value
        elif key in ("disk_free_kb", "shm_kb"):
            setattr(facts, key, int(value or 0))
        elif key in ("user_exists", "root_is_unmanaged", "models_is_unmanaged"):
            setattr(facts, key, value == "yes")
        elif hasattr(facts, key):
            setattr(facts, key, value)
    return facts


def gather_facts(conn, triton_user: str, models_path: str) -> Facts:
    return parse_facts(conn.run(gather_command(triton_user, models_path), timeout=60).stdout)
