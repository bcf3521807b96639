"""Generic host probes: POSIX-sh fragments and the parsers of what they print, each probe written once.

The facts script (`triton/facts.py`) and the doctor's evidence script (`triton/doctor.py`) are both built from
these fragments, so a probe has one shell text and one parser, and each script still costs one round trip.
Fragments print `key=value` lines (a key repeated for a list), or a tool's raw output between `@@begin NAME`
and `@@end` lines. They are tuned to start few processes: the no-op deploy's cost is a handful per host.
"""

from __future__ import annotations

import re
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

# Installed packages, and the C library's package as `libc=<architecture> <version>` (libc6 for dpkg, glibc for rpm;
# one line per architecture installed): the glibc the bundle needs and the architecture it runs on, without another
# process. The shell reads the list itself, one line at a time, split on newlines only.
INSTALLED_PACKAGES = r"""
packages=
if command -v dpkg-query >/dev/null 2>&1; then
  packages=$(dpkg-query -W -f='${db:Status-Abbrev}${Package} ${Architecture} ${Version}\n' 2>/dev/null)
elif command -v rpm >/dev/null 2>&1; then
  packages=$(rpm -qa --qf 'ii %{NAME} %{ARCH} %{VERSION}\n' 2>/dev/null)
fi
set -f; IFS='
'
for line in $packages; do
  case $line in
    'ii '*) line=${line#ii }; echo "package=${line%% *}"
      case $line in 'libc6 '*|'glibc '*) echo "libc=${line#* }" ;; esac ;;
  esac
done
unset IFS; set +f
"""

# libstdc++'s file name carries the newest GLIBCXX_3.4.N it provides (libstdc++.so.6.0.30: GLIBCXX_3.4.30, GCC 12).
LIBSTDCXX = r"""
for f in /usr/lib/*-linux-gnu/libstdc++.so.6.0.* /usr/lib64/libstdc++.so.6.0.* /usr/lib/libstdc++.so.6.0.*; do
  if [ -f "$f" ]; then echo "libstdcxx=${f##*/}"; fi
done
"""

# numpy's metadata folders where the distribution's python3 looks, in the order of its sys.path (pip's /usr/local
# first), from the shell's glob: starting Python to ask numpy costs more than the whole facts script. Unseen: the
# service user's ~/.local, PYTHONPATH and .pth additions, virtual environments and EXECUTION_ENV_PATH archives.
# Needs $python_version (PYTHON_VERSION).
NUMPY = r"""
if [ -n "$python_version" ]; then
  for d in /usr/local/lib/python$python_version/dist-packages/numpy-*-info /usr/lib/python3/dist-packages/numpy-*-info \
           /usr/local/lib64/python$python_version/site-packages/numpy-*-info \
           /usr/local/lib/python$python_version/site-packages/numpy-*-info \
           /usr/lib64/python$python_version/site-packages/numpy-*-info \
           /usr/lib/python$python_version/site-packages/numpy-*-info; do
    if [ -d "$d" ]; then echo "numpy=$d"; fi
  done
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

# nvidia-smi's field names (`nvidia-smi --help-query-gpu`). Drivers older than R510 know no compute_cap and refuse
# the whole query (`Field "compute_cap" is not a valid field to query.` on stdout, exit 2): they are asked again
# for the fields every driver knows. The CSV keeps its header, which names the columns either way.
GPU_FIELDS = ("index", "name", "uuid", "memory.total", "driver_version", "compute_cap", "mig.mode.current")
GPU_FIELDS_BEFORE_R510 = ("index", "name", "uuid", "memory.total", "driver_version")
# The columns of headerless CSV: what tritonfleet asked before it kept the header (older recorded evidence).
HEADERLESS_GPU_FIELDS = ("index", "name", "driver_version", "memory.total")


def gpus(timeout_s: int = 0) -> str:
    """nvidia-smi's CSV as the `gpus` section; `timeout_s` bounds a hung driver where a script must finish."""
    bounded = f"timeout {timeout_s} " if timeout_s else ""

    def query(fields: tuple[str, ...]) -> str:
        return f"{bounded}nvidia-smi --query-gpu={','.join(fields)} --format=csv,nounits 2>/dev/null"
    return f"""
if command -v nvidia-smi >/dev/null 2>&1; then
  begin gpus; {query(GPU_FIELDS)} || {{ [ $? = 2 ] && {query(GPU_FIELDS_BEFORE_R510)}; }}; end
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
    memory_mib: int  # 0 where nvidia-smi cannot tell
    uuid: str = ""
    compute_cap: str = ""  # "9.0"; "" where nvidia-smi cannot tell ([N/A], drivers before R510)
    mig_mode: str = ""  # "Enabled" or "Disabled"; "" on GPUs without MIG

    def describe(self) -> str:
        """One line for a person: index, name, memory, driver, compute capability, MIG."""
        details = [f"{self.memory_mib} MiB" if self.memory_mib else "", f"driver {self.driver}" if self.driver else "",
                   f"compute {self.compute_cap}" if self.compute_cap else "",
                   f"MIG {self.mig_mode.lower()}" if self.mig_mode else ""]
        return f"{self.index}: {self.name} ({', '.join(d for d in details if d)})"


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
    architectures: list = field(default_factory=list)  # of the installed C libraries, as `uname -m` names them
    glibc_version: str = ""  # "2.36", from the C library's package; "" without dpkg or rpm
    glibcxx_version: str = ""  # "3.4.30": the newest GLIBCXX_ the system libstdc++ provides
    numpy_version: str = ""  # the numpy python3 imports first, from its metadata folder; "" when none was seen
    numpy_path: str = ""  # that folder
    gpus: list = field(default_factory=list)
    disk_free_kb: int | None = None  # free in /opt; None: not measured
    shm_kb: int | None = None  # size of /dev/shm; None: not mounted
    shm_free_kb: int | None = None
    service: dict = field(default_factory=dict)  # the unit's systemctl properties asked for, and UptimeSeconds


_CSV_HEADER_CELL = re.compile(r"[a-z][a-z0-9_.]*(?: \[[^\]]*\])?")  # "index", "memory.total [MiB]"
_NOT_AVAILABLE = ("[N/A]", "[Not Supported]", "N/A", "[Unknown Error]")


def _gpu_of(row: dict, position: int) -> Gpu | None:
    """One GPU from a CSV row by field name; None when its index is not a number (an error line)."""
    def value(field_name: str) -> str:
        text = row.get(field_name, "")
        return "" if text in _NOT_AVAILABLE else text
    index = value("index") if "index" in row else str(position)
    memory = value("memory.total").split(" ")[0]  # "81559", or "81559 MiB" without nounits
    if not index.isdigit():
        return None
    return Gpu(int(index), value("name"), value("driver_version"), int(memory) if memory.isdigit() else 0,
               value("uuid"), value("compute_cap"), value("mig.mode.current"))


def parse_gpus(csv_text: str, fields: tuple[str, ...] = HEADERLESS_GPU_FIELDS) -> list[Gpu]:
    """GPUs from `nvidia-smi --query-gpu=... --format=csv[,nounits]`, its columns named by its header line (the
    last one, after an error line), or by `fields` where it printed none. A value nvidia-smi cannot read ("[N/A]",
    "[Not Supported]") is empty (memory 0); lines that are no GPU (errors, "No devices were found") are skipped.
    Without an index column, the rows' order is the index (nvidia-smi lists GPUs by index)."""
    columns, found = list(fields), []
    for line in csv_text.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if all(_CSV_HEADER_CELL.fullmatch(cell) for cell in cells):
            columns, found = [cell.split(" [")[0] for cell in cells], []
        elif len(cells) <= len(columns):  # a shorter row: the fields not asked for are empty
            gpu = _gpu_of(dict(zip(columns, cells)), len(found))
            if gpu is not None:
                found.append(gpu)
    return found


def _kib(text: str) -> int | None:
    return int(text) if text.isdigit() else None


# dpkg's architecture names -> `uname -m`'s (rpm already uses those)
_DPKG_ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le", "i386": "i686", "armhf": "armv7l"}


def _upstream_version(package_version: str) -> str:
    """"2.36" of dpkg's "2.36-9+deb12u7" or rpm's "2.34": the upstream part, without epoch or revision."""
    return package_version.split(":", 1)[-1].split("-", 1)[0].split("+", 1)[0]


def _libc(lines: list[str]) -> tuple[list[str], str]:
    """The architectures and the version of the C library from its `libc=<architecture> <version>` lines."""
    pairs = [line.split(" ", 1) for line in lines if " " in line]
    architectures = [_DPKG_ARCHITECTURES.get(arch, arch) for arch, _ in pairs]
    return architectures, _upstream_version(pairs[0][1]) if pairs else ""


def _glibcxx(file_names: list[str]) -> str:
    """The newest GLIBCXX_3.4.N from libstdc++.so.6.0.N file names."""
    minors = [int(name.rsplit(".", 1)[1]) for name in file_names if name.rsplit(".", 1)[1].isdigit()]
    return f"3.4.{max(minors)}" if minors else ""


def _dist_version(path: str) -> str:
    """"1.24.2" of .../numpy-1.24.2.dist-info, .../numpy-1.24.2.egg-info or .../numpy-1.21.5-py3.10.egg-info."""
    return path.rsplit("/", 1)[-1][len("numpy-"):].rsplit(".", 1)[0].split("-", 1)[0]


def parse_host(out: Output) -> Host:
    shm = out.value("shm_kb").split() + ["", ""]
    architectures, glibc = _libc(out.every("libc"))
    numpy = (out.every("numpy") + [""])[0]
    return Host(
        os_id=out.value("os_id"), os_version=out.value("os_version"), os_name=out.value("os_name"),
        init=out.value("init"), python_version=out.value("python_version"), pkg_mgr=out.value("pkg_mgr"),
        packages={name.split(":")[0] for name in out.every("package")},
        architectures=architectures, glibc_version=glibc, glibcxx_version=_glibcxx(out.every("libstdcxx")),
        numpy_version=_dist_version(numpy) if numpy else "", numpy_path=numpy,
        gpus=parse_gpus(out.sections.get("gpus", "")),
        disk_free_kb=_kib(out.value("disk_free_kb")), shm_kb=_kib(shm[0]), shm_free_kb=_kib(shm[1]),
        service={key[len("service_"):]: values[-1] for key, values in out.values.items()
                 if key.startswith("service_")},
    )
