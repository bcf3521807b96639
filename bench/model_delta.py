"""Bytes sent for a one-file change in a large model repository (issue: model updates). Prints figures.

Usage (as root, lab up): python3 bench/model_delta.py [--host gpu01] [--size-mb 120]
Builds a repository of the example models plus a model carrying SIZE MB of weights, syncs it to the host,
changes one file, syncs again, and prints the bytes sent each time against the repository's size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def sync(host: str, models: Path) -> tuple[dict, float]:
    t0 = time.monotonic()
    proc = subprocess.run(["invoke", "deploy", "--host", host, "--models", str(models), "--json"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)["hosts"][0]
    step = next(s for s in report["steps"] if s["module"] == "model_repository")
    return {"bytes_sent_models": step.get("bytes_sent", 0),
            "bytes_sent_total": report["bytes_sent"], "files": step.get("data", {}).get("files", [])}, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="gpu01")
    ap.add_argument("--size-mb", type=int, default=120)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        shutil.copytree(REPO_ROOT / "examples" / "models", repo)
        weights = repo / "add_sub" / "1" / "weights.bin"
        with open(weights, "wb") as fh:
            for _ in range(args.size_mb):
                fh.write(os.urandom(1 << 20))
        size = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
        first, t_first = sync(args.host, repo)
        model_py = repo / "str_upper" / "1" / "model.py"
        model_py.write_text(model_py.read_text() + "\n# one-file change\n")
        changed = model_py.stat().st_size
        second, t_second = sync(args.host, repo)
    print(f"repository size:            {size:>12,d} bytes")
    print(f"first sync, models sent:    {first['bytes_sent_models']:>12,d} bytes  ({t_first:.1f} s deploy)")
    print(f"changed file size:          {changed:>12,d} bytes  ({second['files']})")
    print(f"one-file change, sent:      {second['bytes_sent_models']:>12,d} bytes  ({t_second:.1f} s deploy)")
    print(f"ratio sent / repository:    {second['bytes_sent_models'] / size:>12.5f}")


if __name__ == "__main__":
    main()
