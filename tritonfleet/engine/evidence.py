"""Generic host probes: POSIX-sh fragments and the parsers of what they print, each probe written once.

The facts script (`triton/facts.py`) and the doctor's evidence script (`triton/doctor.py`) are both built from
these fragments, so a probe has one shell text and one parser, and each script still costs one round trip.
Fragments print `key=value` lines (a key repeated for a list), or a tool's raw output between `@@begin NAME`
and `@@end` lines. They are tuned to start few processes: the no-op deploy's cost is a handful per host.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

# The section markers; `end` starts a new line first, so output without a final newline is not lost.
SECTIONS = r"""
begin() { echo "@@begin $1"; }
end() { echo; echo "@@end"; }
"""

# A missing /etc/os-release must not stop the script (`.` of a missing file exits a POSIX shell).
OS_RELEASE = r"""
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${ID:-unknown}"
echo "os_version=${VERSION_ID:-unknown}"
echo "os_name=${PRETTY_NAME:-unknown}"
"""

INIT = r"""
read -r init 2>/dev/null </proc/1/comm; echo "init=$init"
"""

# python3 -> python3.N names the version without starting Python; anything else is asked. Leaves the version in
# $python_version for the fragments after it.
PYTHON_VERSION = r"""
python_version=$(readlink -f "$(command -v python3)" 2>/dev/null); python_version=${python_version##*/python}
case $python_version in
  3.[0-9]|3.[0-9][0-9]) ;;
  *) python_version=$(python3 -I -S -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ;;
esac
echo "python_version=$python_version"
"""

PKG_MGR = r"""
for m in apt-get dnf yum zypper; do command -v $m >/dev/null 2>&1 && { echo "pkg_mgr=${m%-get}"; break; }; done
"""

INSTALLED_PACKAGES = r"""
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' 2>/dev/null | awk '$2 ~ /^ii/ {print "package=" $1}'
elif command -v rpm >/dev/null 2>&1; then
  rpm -qa --qf 'package=%{NAME}\n' 2>/dev/null
fi
"""

# Free space in /opt and the size and free space of /dev/shm (`shm_kb=<size> <free>`), from one df. Only paths
# that exist are asked and each df line is named by the path asked, so a missing /opt cannot pass for /dev/shm.
DISKS = r"""
disks=; for p in /opt /dev/shm; do [ -e $p ] && disks="$disks $p"; done
if [ -n "$disks" ]; then
  df -Pk $disks 2>/dev/null | awk -v paths="$disks" 'BEGIN {split(paths, path, " ")}
    path[NR - 1] == "/opt" {print "disk_free_kb=" $4}
    path[NR - 1] == "/dev/shm" {print "shm_kb=" $2 " " $4}'
fi
"""

GPU_QUERY = "nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader,nounits"


def gpus(timeout_s: int = 0) -> str:
    """nvidia-smi's CSV as the `gpus` section; `timeout_s` bounds a hung driver where a script must finish."""
    bounded = f"timeout {timeout_s} " if timeout_s else ""
    return f"""
if command -v nvidia-smi >/dev/null 2>&1; then
  begin gpus; {bounded}{GPU_QUERY} 2>/dev/null; end
fi
"""


def systemd_unit(unit: str, properties: tuple[str, ...]) -> str:
    """`systemctl show` of one unit as `service_<Property>=<value>` lines, from one systemctl call.

    The shell reads the answer itself (no sed). MainPID is left in $main_pid and User in $unit_user for the
    fragments after it; ActiveEnterTimestamp becomes service_UptimeSeconds, counted on the host's own clock.
    """
    asked = " ".join(f"-p {p}" for p in properties)
    return f"""
main_pid= unit_user= active_since=
service=$(systemctl show {shlex.quote(unit)} {asked} 2>/dev/null)
while IFS='=' read -r key value; do
  case $key in
    '') continue ;;
    MainPID) main_pid=$value ;;
    User) unit_user=$value ;;
    ActiveEnterTimestamp) active_since=$value; continue ;;
  esac
  echo "service_$key=$value"
done <<SERVICE
$service
SERVICE
if [ -n "$active_since" ] && since=$(date -d "$active_since" +%s 2>/dev/null); then
  echo "service_UptimeSeconds=$(( $(date +%s) - since ))"
fi
"""


def script(*fragments: str) -> str:
    """One POSIX sh script of the section markers and these fragments, in order."""
    return "".join((SECTIONS, *fragments))


def command(script_text: str, env: dict[str, str]) -> str:
    """The shell command running `script_text` under `sh` with `env` (values quoted)."""
    assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"{assign} sh -c {shlex.quote(script_text)}"


# ---- parsing ---------------------------------------------------------------------------------------------------


@dataclass
class Output:
    """A probe script's answer: every value of each key, in order, and the sections by name."""
    values: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)

    def value(self, key: str) -> str:
        """The key's last value ("" when the script printed none)."""
        return self.values.get(key, [""])[-1]

    def every(self, key: str) -> list[str]:
        return list(self.values.get(key, []))


def parse_output(text: str) -> Output:
    out = Output()
    section, body = None, []
    for line in text.splitlines():
        if section is not None:
            if line == "@@end":
                out.sections[section] = "\n".join(body).rstrip("\n")
                section, body = None, []
            else:
                body.append(line)
        elif line.startswith("@@begin "):
            section = line[len("@@begin "):]
        else:
            key, sep, value = line.partition("=")
            if sep:
                out.values.setdefault(key, []).append(value.strip())
    return out


@dataclass
class Gpu:
    index: int
    name: str
    driver: str
    memory_mib: int


@dataclass
class Host:
    """What the generic probes found; a probe a script did not run leaves its default."""
    os_id: str = ""
    os_version: str = ""
    os_name: str = ""
    init: str = ""  # PID 1's name
    python_version: str = ""  # "3.11"; "" without python3
    pkg_mgr: str = ""
    packages: set = field(default_factory=set)
    gpus: list = field(default_factory=list)
    disk_free_kb: int | None = None  # free in /opt; None: not measured
    shm_kb: int | None = None  # size of /dev/shm; None: not mounted
    shm_free_kb: int | None = None
    service: dict = field(default_factory=dict)  # the unit's systemctl properties asked for, and UptimeSeconds


def parse_gpus(csv_text: str) -> list[Gpu]:
    """GPUs from nvidia-smi's `index, name, driver_version, memory.total` CSV lines.

    A memory nvidia-smi cannot read ("[N/A]") or did not print is 0; a line that is no GPU (an error) is skipped.
    """
    found = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            memory = parts[3] if len(parts) > 3 else ""
            found.append(Gpu(int(parts[0]), parts[1], parts[2], int(memory) if memory.isdigit() else 0))
    return found


def _kib(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def parse_host(out: Output) -> Host:
    shm = out.value("shm_kb").split() + ["", ""]
    return Host(
        os_id=out.value("os_id"), os_version=out.value("os_version"), os_name=out.value("os_name"),
        init=out.value("init"), python_version=out.value("python_version"), pkg_mgr=out.value("pkg_mgr"),
        packages={name.split(":")[0] for name in out.every("package")},
        gpus=parse_gpus(out.sections.get("gpus", "")),
        disk_free_kb=_kib(out.value("disk_free_kb")), shm_kb=_kib(shm[0]), shm_free_kb=_kib(shm[1]),
        service={key[len("service_"):]: values[-1] for key, values in out.values.items()
                 if key.startswith("service_")},
    )
