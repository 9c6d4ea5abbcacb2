"""``polyrnn bench`` idle and under a competing CPU load, for several thread settings.

    python benchmarks/threads_under_load.py --threads 1,2,0 --repeats 10

The load is one busy Python process per core (what a browser, a compiler or a second model does to a
laptop). Each setting runs ``polyrnn bench --no-train --json`` in a fresh process; the table gives the
median milliseconds of the interactive parts and the loaded / idle ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys


def _spin() -> None:
    while True:
        pass


def bench(threads: int, repeats: int) -> dict:
    cmd = [sys.executable, "-m", "polyrnn.cli", "bench", "--no-train", "--json", "--repeats", str(repeats)]
    done = subprocess.run([*cmd, "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2,0", help="settings to compare (0 = all cores)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy processes for the loaded run")
    args = ap.parse_args()
    settings = [int(t) for t in args.threads.split(",")]
    parts = ("encoder", "automatic", "correction", "rnn_polygon")
    rows = {}
    for t in settings:
        rows[(t, "idle")] = bench(t, args.repeats)
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    try:
        for t in settings:
            rows[(t, "loaded")] = bench(t, args.repeats)
    finally:
        for p in spinners:
            p.terminate()
    print(f"{os.cpu_count()} cores; load: {args.load} busy processes; median ms (p90)")
    print(f"| threads | condition | {' | '.join(parts)} |")
    print("|---|---|" + "---:|" * len(parts))
    for (t, cond), r in rows.items():
        cells = [f"{r['ms'][p]['median']:.0f} ({r['ms'][p]['p90']:.0f})" for p in parts]
        print(f"| {t or 'all'} ({r['threads']}) | {cond} | {' | '.join(cells)} |")
    for t in settings:
        loaded, idle = (rows[(t, c)]["ms"]["automatic"]["median"] for c in ("loaded", "idle"))
        ratio = loaded / idle
        print(f"threads {t or 'all'}: automatic polygon loaded / idle = {ratio:.1f}x")


if __name__ == "__main__":
    main()
