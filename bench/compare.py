"""tritonfleet against the equivalent Ansible playbook (bench/ansible/deploy.yml), on the same lab hosts.

Usage (as root): python3 bench/compare.py [--hosts 1,4,8] [--repeats 3] [--markdown]
For each host count and repeat, each tool in turn (alternating which goes first) gets freshly reset hosts and
runs three scenarios: a cold deploy, a second deploy with nothing changed, a deploy after changing one model
file. Prints the median wall time of each tool, the ratio, the bytes sent to the hosts (counted on their
veth links, the same way for both tools) and how each tool's time splits between transfer, remote commands
and waiting for readiness (per host, median over hosts and repeats). Both use the same inventory, SSH
settings, bundle, model repository and systemd unit, and as many forks as hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tritonfleet import lab  # noqa: E402
from tritonfleet.triton.bundle import default_bundle  # noqa: E402
from tritonfleet.engine.inventory import DEFAULT_INVENTORY, load_inventory  # noqa: E402
from tritonfleet.engine.playbook import JINJA  # noqa: E402
from tritonfleet.fleet.run import host_vars  # noqa: E402

SCENARIOS = ("cold", "no-op", "one-file change")
TRANSFER_TF = {"triton_release", "model_repository"}
READY_TF = {"wait_ready", "smoke"}
TRANSFER_ANSIBLE = {"ansible.builtin.unarchive", "ansible.builtin.copy"}
READY_ANSIBLE = {"ansible.builtin.uri"}


def veth_bytes(names: list[str]) -> int:
    """Bytes the control machine sent to these hosts (their host-side veth transmits toward them)."""
    total = 0
    for name in names:
        path = Path(f"/sys/class/net/{lab.VETH_PREFIX}{name}/statistics/tx_bytes")
        total += int(path.read_text())
    return total


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores: how much of the machine a run kept busy (lab hosts share it)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def split(times: dict[str, dict[str, float]], cpu: float) -> dict[str, float]:
    """Median over hosts of each category's seconds, and the share of the machine's CPU the run used."""
    cats = ("transfer", "remote", "ready")
    return {**{c: statistics.median(t.get(c, 0.0) for t in times.values()) if times else 0.0 for c in cats},
            "cpu": cpu}


def run_tritonfleet(hosts: list[str], models: Path) -> tuple[float, dict]:
    t0 = time.monotonic()
    proc = subprocess.run(["invoke", "deploy", "--host", ",".join(hosts), "--models", str(models), "--json",
                           "--forks", str(len(hosts))], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=1800)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"tritonfleet failed:\n{proc.stderr[-3000:]}")
    times: dict[str, dict[str, float]] = {}
    for h in json.loads(proc.stdout)["hosts"]:
        t = times.setdefault(h["host"], {"remote": h.get("facts_seconds", 0.0)})
        for step in h["steps"]:
            cat = "transfer" if step["module"] in TRANSFER_TF else "ready" if step["module"] in READY_TF else "remote"
            t[cat] = t.get(cat, 0.0) + step.get("seconds", 0.0)
    return wall, times


def run_ansible(hosts: list[str], models: Path, extra: dict, workdir: Path) -> tuple[float, dict]:
    times_file = workdir / "task_times.jsonl"
    times_file.unlink(missing_ok=True)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "bench" / "ansible" / "ansible.cfg"),
           "TASK_TIMES_FILE": str(times_file)}
    cmd = ["ansible-playbook", "-i", str(DEFAULT_INVENTORY), "--limit", ",".join(hosts), "-f", str(len(hosts)),
           str(REPO_ROOT / "bench" / "ansible" / "deploy.yml"), "-e", json.dumps({**extra, "models": str(models)})]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO_ROOT / "bench" / "ansible", env=env, capture_output=True, text=True,
                          timeout=3600)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ansible-playbook failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    times: dict[str, dict[str, float]] = {}
    for line in times_file.read_text().splitlines():
        rec = json.loads(line)
        cat = ("transfer" if rec["action"] in TRANSFER_ANSIBLE else
               "ready" if rec["action"] in READY_ANSIBLE else "remote")
        t = times.setdefault(rec["host"], {})
        t[cat] = t.get(cat, 0.0) + rec["seconds"]
    return wall, times


def reset(hosts: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(lab.reset_host, hosts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="1,4,8", help="host counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    args = ap.parse_args()
    inventory = load_inventory(DEFAULT_INVENTORY)
    lab_hosts = inventory.select(group="lab")
    bundle = default_bundle(progress=lambda m: None)
    counts = [int(n) for n in args.hosts.split(",")]
    lab.up([lab.LabHost(h.name, h.address) for h in lab_hosts[:max(counts)]], progress=lambda m: None)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        unit = workdir / "tritonserver.service"
        unit.write_text(JINJA.from_string((REPO_ROOT / "templates" / "tritonserver.service.j2").read_text())
                        .render(host_vars(lab_hosts[0], {})))
        extra = {"bundle_path": str(bundle.path), "bundle_id": bundle.bundle_id, "unit_file": str(unit)}
        for n in counts:
            names = [h.name for h in lab_hosts[:n]]
            samples = {(tool, s): [] for tool in ("tritonfleet", "ansible") for s in SCENARIOS}
            for r in range(args.repeats):
                order = ("tritonfleet", "ansible") if r % 2 == 0 else ("ansible", "tritonfleet")
                for tool in order:
                    models = workdir / f"models-{n}-{r}-{tool}"
                    shutil.copytree(REPO_ROOT / "examples" / "models", models)
                    reset(names)
                    for scenario in SCENARIOS:
                        if scenario == "one-file change":
                            model_py = models / "str_upper" / "1" / "model.py"
                            model_py.write_text(model_py.read_text() + f"\n# change {r}\n")
                        sent, (busy0, total0) = veth_bytes(names), cpu_ticks()
                        if tool == "tritonfleet":
                            wall, times = run_tritonfleet(names, models)
                        else:
                            wall, times = run_ansible(names, models, extra, workdir)
                        busy1, total1 = cpu_ticks()
                        cpu = (busy1 - busy0) / max(1, total1 - total0)
                        samples[(tool, scenario)].append((wall, veth_bytes(names) - sent, split(times, cpu)))
                        print(f"hosts={n} repeat={r} {tool:<11} {scenario:<15} {wall:6.1f} s", file=sys.stderr)
            for scenario in SCENARIOS:
                row = {"hosts": n, "scenario": scenario}
                for tool in ("tritonfleet", "ansible"):
                    runs = samples[(tool, scenario)]
                    row[tool] = {"wall": statistics.median(w for w, _, _ in runs),
                                 "bytes": statistics.median(b for _, b, _ in runs),
                                 "split": {c: statistics.median(s[c] for _, _, s in runs)
                                           for c in ("transfer", "remote", "ready", "cpu")}}
                results.append(row)
        reset([h.name for h in lab_hosts[:max(counts)]])
    print_table(results, args.markdown, args.repeats)


def print_table(results: list[dict], markdown: bool, repeats: int) -> None:
    head = ("hosts", "scenario", "tritonfleet s", "ansible s", "ratio", "tritonfleet sent", "ansible sent",
            "tritonfleet split (transfer/remote/ready s)", "ansible split (transfer/remote/ready s)",
            "CPU busy (tritonfleet/ansible)")
    rows = []
    for r in results:
        tf, an = r["tritonfleet"], r["ansible"]
        fmt = lambda s: "/".join(f"{s[c]:.1f}" for c in ("transfer", "remote", "ready"))  # noqa: E731
        rows.append((str(r["hosts"]), r["scenario"], f"{tf['wall']:.1f}", f"{an['wall']:.1f}",
                     f"{an['wall'] / tf['wall']:.1f}x", f"{tf['bytes'] / 1e6:.2f} MB", f"{an['bytes'] / 1e6:.2f} MB",
                     fmt(tf["split"]), fmt(an["split"]),
                     f"{tf['split']['cpu']:.0%}/{an['split']['cpu']:.0%}"))
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print(f"\nMedian of {repeats} run(s) per cell.")
    else:
        widths = [max(len(x), *(len(row[i]) for row in rows)) for i, x in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    with lab.exclusive("bench/compare.py"):
        main()
