"""What one control machine pays per host: `invoke deploy` and ansible-playbook with tritonfleet.triton.deploy.

Usage (as root): python3 bench/sizing.py [--hosts 1,4,8] [--markdown]
For each host count, with each tool in turn: freshly reset lab hosts get a cold deploy, then a no-op deploy
(nothing changed), all hosts at once (forks = hosts; the Ansible play has no `serial`). While each run works, this
process samples its whole process tree (it is their subreaper, so OpenSSH's ControlPersist masters, which detach,
stay in it): peak memory (sum of RSS, and of PSS, which counts pages forks share once), peak open files (entries of
/proc/PID/fd) and peak SSH connections (established TCP connections from this machine to the lab hosts' port 22,
/proc/net/tcp). CPU seconds are getrusage(RUSAGE_CHILDREN) user+system over the run, every process reaped. The lab
is brought up and reset by a child process that exits, so its hosts are never in the tree measured.
The lab has 8 hosts (group lab): 16 and more hosts are extrapolated from the per-host cost, not measured.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tritonfleet import lab  # noqa: E402
from tritonfleet.engine.inventory import DEFAULT_INVENTORY, load_inventory  # noqa: E402

LAB_NET = ipaddress.ip_network(lab.LAB_SUBNET)
PR_SET_CHILD_SUBREAPER = 36
SAMPLE_S = 0.1
LAB_SIZE = 8
SCENARIOS = ("cold", "no-op")
PLAY = """- name: Triton, every host at once
  hosts: all
  gather_facts: false
  tasks:
    - name: Triton deployed
      tritonfleet.triton.deploy:
        models: "{{ models }}"
"""


@dataclass
class Cost:
    wall: float = 0.0
    cpu: float = 0.0
    rss: int = 0  # bytes, peak of the sum over the process tree
    pss: int = 0
    fds: int = 0
    ssh: int = 0


def descendants(root: int) -> list[int]:
    """Every process below `root` (from each /proc/PID/stat's parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes; a process gone meanwhile counts 0."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    except OSError:
        return 0, 0
    return int(fields["Rss"].split()[0]) * 1024, int(fields["Pss"].split()[0]) * 1024


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def ssh_connections() -> int:
    """Established TCP connections from this machine to port 22 of a lab host (paramiko's and OpenSSH's alike)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            remote, state = line.split()[2], line.split()[3]
            address, port = remote.split(":")
            if state == "01" and port == "0016" and len(address) == 8 and \
                    ipaddress.ip_address(bytes.fromhex(address)[::-1]) in LAB_NET:
                count += 1
    return count


def sample(cost: Cost, stop: threading.Event) -> None:
    me = os.getpid()
    while not stop.wait(SAMPLE_S):
        pids = descendants(me)
        memory = [memory_of(pid) for pid in pids]
        cost.rss = max(cost.rss, sum(m[0] for m in memory))
        cost.pss = max(cost.pss, sum(m[1] for m in memory))
        cost.fds = max(cost.fds, sum(open_files(pid) for pid in pids))
        cost.ssh = max(cost.ssh, ssh_connections())


def reap() -> None:
    """Wait for every finished descendant (detached ssh masters included), so RUSAGE_CHILDREN counts them."""
    deadline = time.monotonic() + 15
    while descendants(os.getpid()) and time.monotonic() < deadline:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        time.sleep(0.1)


def subreaper(on: bool) -> None:
    """While on, processes that detach from a run (ControlPersist masters) become this process's children."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def measured(argv: list[str], env: dict | None = None, cwd: Path = REPO_ROOT) -> Cost:
    cost, stop = Cost(), threading.Event()
    sampler = threading.Thread(target=sample, args=(cost, stop))
    subreaper(True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    sampler.start()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    cost.wall = time.monotonic() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                         f"{proc.stderr[-3000:]}")
    reap()
    subreaper(False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cost.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cost


def install_collection(where: Path) -> dict:
    """The collection built from collection/ and installed as a user would; ansible-playbook's environment."""
    subprocess.run(["ansible-galaxy", "collection", "build", str(REPO_ROOT / "collection"), "--output-path",
                    str(where)], check=True, capture_output=True)
    subprocess.run(["ansible-galaxy", "collection", "install", *map(str, where.glob("tritonfleet-triton-*.tar.gz")),
                    "-p", str(where / "collections")], check=True, capture_output=True)
    return {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(where / "collections"), "PYTHONPATH": str(REPO_ROOT),
            "ANSIBLE_RETRY_FILES_ENABLED": "0"}


def run_invoke(names: list[str], models: Path, env: dict, workdir: Path) -> Cost:
    return measured(["invoke", "deploy", "--host", ",".join(names), "--models", str(models), "--forks",
                     str(len(names)), "--inventory", str(DEFAULT_INVENTORY)])


def run_ansible(names: list[str], models: Path, env: dict, workdir: Path) -> Cost:
    return measured(["ansible-playbook", "-i", str(DEFAULT_INVENTORY), "--limit", ",".join(names), "-f",
                     str(len(names)), str(workdir / "play.yml"), "-e", json.dumps({"models": str(models)})],
                    env=env, cwd=workdir)


TOOLS = {"invoke": run_invoke, "ansible": run_ansible}


def in_lab(call: str) -> None:
    """A lab call made by a child process that exits: the hosts it boots are not this process's descendants."""
    subprocess.run([sys.executable, "-c", f"from concurrent.futures import ThreadPoolExecutor\n"
                    f"from tritonfleet import lab\n{call}"], cwd=REPO_ROOT, check=True)


def reset(names: list[str]) -> None:
    in_lab(f"with ThreadPoolExecutor({len(names)}) as pool: list(pool.map(lab.reset_host, {names!r}))")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="1,4,8", help=f"host counts, comma-separated (at most {LAB_SIZE})")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    args = ap.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    if max(counts) > LAB_SIZE:
        raise SystemExit(f"the lab has {LAB_SIZE} hosts (inventory group lab): {max(counts)} cannot be measured, "
                         "only extrapolated from the per-host cost this prints")
    lab_hosts = load_inventory(DEFAULT_INVENTORY).select(group="lab")
    in_lab(f"lab.up([lab.LabHost(n, a) for n, a in {[(h.name, h.address) for h in lab_hosts[:max(counts)]]!r}], "
           "progress=lambda m: None)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = install_collection(workdir)
        (workdir / "play.yml").write_text(PLAY)
        models = workdir / "models"
        shutil.copytree(REPO_ROOT / "examples" / "models", models)
        for n in counts:
            names = [h.name for h in lab_hosts[:n]]
            for tool, run in TOOLS.items():
                reset(names)
                for scenario in SCENARIOS:
                    cost = run(names, models, env, workdir)
                    rows.append((n, tool, scenario, cost))
                    print(f"hosts={n} {tool:<8} {scenario:<6} {cost.wall:6.1f} s  cpu {cost.cpu:6.2f} s",
                          file=sys.stderr)
    print_table(rows, args.markdown)
    print_per_host(rows)


def print_table(rows: list, markdown: bool) -> None:
    head = ("hosts", "tool", "scenario", "wall s", "CPU s", "CPU s/host", "peak RSS MiB", "peak PSS MiB",
            "peak open files", "peak SSH connections")
    table = [(str(n), tool, scenario, f"{c.wall:.1f}", f"{c.cpu:.2f}", f"{c.cpu / n:.2f}", f"{c.rss / 2**20:.0f}",
              f"{c.pss / 2**20:.0f}", str(c.fds), str(c.ssh)) for n, tool, scenario, c in rows]
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in table:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def print_per_host(rows: list) -> None:
    """The marginal cost of one more host (between the smallest and the largest count), per tool and scenario,
    and what it extrapolates to: hosts whose no-op fits in a minute of this machine's CPUs."""
    cores = os.cpu_count() or 1
    print(f"\nper added host (between the smallest and largest host count; {cores} cores here):")
    for tool in TOOLS:
        for scenario in SCENARIOS:
            costs = sorted((n, c) for n, t, s, c in rows if (t, s) == (tool, scenario))
            if len(costs) < 2:
                continue
            (n0, c0), (n1, c1) = costs[0], costs[-1]
            span = n1 - n0
            cpu, pss = (c1.cpu - c0.cpu) / span, (c1.pss - c0.pss) / span / 2**20
            fds, ssh = (c1.fds - c0.fds) / span, (c1.ssh - c0.ssh) / span
            line = (f"  {tool:<8} {scenario:<6} CPU {cpu:.2f} s, PSS {pss:.0f} MiB, open files {fds:.1f}, "
                    f"SSH connections {ssh:.1f}")
            if scenario == "no-op" and cpu > 0:
                line += (f"; extrapolated: {int(60 * cores / cpu)} hosts' no-op in a minute of {cores} cores' CPU "
                         f"({int(60 / cpu)} per core), if forks keep the cores busy")
            print(line)


if __name__ == "__main__":
    with lab.exclusive("bench/sizing.py", wait_s=900):
        main()
