"""Validation and digest of a model repository holding a big weights file, against a small one (issue 12).

Usage: python3 bench/big_repository.py [--size-mb 1536] [--sparse]
Builds, in a temporary folder under /tmp, the example models (small) and the example models plus a model with a
SIZE MB weights file (random bytes, or a sparse file with --sparse), and validates each one in a fresh process
(as `invoke deploy` does once per run): the first run hashes every byte, the next ones find the digest in the
cache (the median of REPEAT runs is shown, as the small repository's). Then it changes one model.py beside the
weights and validates again. Prints the time validate_repository takes and the process's peak RSS
(resource.getrusage) for each. The digest cache lives in
the temporary folder; everything is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples" / "models"
REPEAT = 5


def child(repository: str) -> None:
    """One run, in this process: what `invoke deploy` pays before it touches a host."""
    sys.path.insert(0, str(REPO_ROOT))
    from tritonfleet.triton.models import validate_repository
    start = time.perf_counter()
    digest = validate_repository(repository).digest
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "digest": digest}))


def run(repository: Path, cache: Path) -> dict:
    env = {**os.environ, "TRITONFLEET_DIGEST_CACHE": str(cache)}
    out = subprocess.run([sys.executable, __file__, "--child", str(repository)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def median_run(repository: Path, cache: Path) -> dict:
    """Single runs of a few milliseconds vary with whatever else the machine does: the median of REPEAT."""
    runs = [run(repository, cache) for _ in range(REPEAT)]
    return {key: statistics.median(r[key] for r in runs) for key in ("seconds", "peak_rss_mb")}


def write_weights(path: Path, size_mb: int, sparse: bool) -> None:
    with open(path, "wb") as f:
        if sparse:
            f.truncate(size_mb << 20)
            return
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))


def settle(path: Path) -> None:
    """Wait until the file is older than the digest cache's racy window (a file changed within it is never cached,
    see tritonfleet/triton/digest.py); a real weights file was written long before the deploy."""
    sys.path.insert(0, str(REPO_ROOT))
    from tritonfleet.triton.digest import RACY_NS
    changed = path.stat().st_ctime_ns
    while time.time_ns() < changed + RACY_NS + 100_000_000:
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1536)
    ap.add_argument("--sparse", action="store_true", help="a sparse weights file instead of random bytes")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)

    work = Path(tempfile.mkdtemp(prefix="tritonfleet-bench-", dir="/tmp"))
    try:
        small, big, cache = work / "small", work / "big", work / "digest-cache"
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(EXAMPLES, small, ignore=ignore)
        shutil.copytree(EXAMPLES, big, ignore=ignore)
        shutil.copytree(EXAMPLES / "add_sub", big / "weighty", ignore=ignore)
        config = big / "weighty" / "config.pbtxt"
        config.write_text(config.read_text().replace('name: "add_sub"', 'name: "weighty"'))
        weights = big / "weighty" / "1" / "weights.bin"
        write_weights(weights, args.size_mb, args.sparse)
        settle(weights)

        rows = [(f"small repository (median of {REPEAT})", median_run(small, cache)),
                (f"{args.size_mb} MB weights, run 1 (cold)", run(big, cache)),
                (f"{args.size_mb} MB weights, runs 2-{REPEAT + 1} (median)", median_run(big, cache))]
        with open(big / "weighty" / "1" / "model.py", "a") as f:
            f.write("\n# changed\n")
        rows.append((f"{args.size_mb} MB weights, one model.py changed", run(big, cache)))

        kind = "sparse" if args.sparse else "random"
        print(f"{'repository (' + kind + ' weights)':<46} {'validate+digest':>16} {'peak RSS':>10}")
        for label, r in rows:
            print(f"{label:<46} {r['seconds'] * 1000:>13.1f} ms {r['peak_rss_mb']:>7.1f} MB")
        small_s, warm_s = rows[0][1]["seconds"], rows[2][1]["seconds"]
        print(f"unchanged big repository / small repository: {warm_s / small_s:.2f}x")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
