"""How long `make demo`'s log goes quiet off a terminal: runs examples/pipeline.sh with stderr piped (not a
TTY, as under nohup or CI), stamps every line as it arrives, and writes bench/results/demo_progress.md with the
longest gaps between lines (issue 14's target: a progress line at least every 30 s).

Usage: .venv/bin/python bench/demo_progress.py [--out-dir bench/_work/demo] [--results bench/results/demo_progress.md]"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "_work" / "demo"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "demo_progress.md"))
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("APLOT_PROGRESS_SECONDS", None)  # the default interval
    start = last = time.monotonic()
    stamped: list[tuple[float, float, str]] = []  # (seconds since start, gap before the line, line)
    with subprocess.Popen(["bash", str(ROOT / "examples" / "pipeline.sh"), args.out_dir], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1) as proc:
        for line in proc.stderr:
            now = time.monotonic()
            stamped.append((now - start, now - last, line.rstrip("\n")))
            last = now
    rc = proc.wait()
    end = time.monotonic()
    gaps = sorted(stamped, key=lambda s: -s[1])
    tail_gap = end - last
    longest = max([g[1] for g in gaps[:1]] + [tail_gap])
    load = os.getloadavg()[0]
    lines = ["# `make demo` off a terminal: the longest silences in its log", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python bench/demo_progress.py` "
             f"(examples/pipeline.sh, stderr piped; default progress interval). Exit code {rc}; "
             f"{len(stamped)} lines in {end - start:.0f} s on {os.cpu_count()} cores (load average at the end "
             f"{load:.1f}: other jobs shared the CPU).", "",
             f"**Longest gap between two lines: {longest:.1f} s** (target <= {TARGET_S:.0f} s: "
             f"{'met' if longest <= TARGET_S else 'NOT met'}).", "",
             "The five longest gaps, each with the line that ended it:", "", "| at s | gap s | line |",
             "| ---: | ---: | --- |"]
    for at, gap, text in gaps[:5]:
        lines.append(f"| {at:.1f} | {gap:.1f} | `{text[:110].replace('|', '/')}` |")
    Path(args.results).write_text("\n".join(lines) + "\n")
    print(args.results)
    sys.exit(rc)


if __name__ == "__main__":
    main()
