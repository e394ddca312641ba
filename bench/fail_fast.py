"""How long a run takes to fail when what it needs is not there (issue 21, "Slow failures"): a model given as a
hub id with the hub unreachable and no HF_*_OFFLINE set, and `compare --executor ray --address` of a cluster
that does not answer. Each case runs in a fresh process, with the libraries imported before the clock starts
(the import is the same either way), once through the libraries' own call (what aplot did before) and once
through aplot's check; writes bench/results/fail_fast.md.

Usage: .venv/bin/python bench/fail_fast.py [--address 10.255.255.1:6379] [--results bench/results/fail_fast.md]"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each snippet imports what it needs, then prints the seconds its one call took and what it raised.
_TIMED = """
import time, sys
{imports}
start = time.perf_counter()
try:
    {call}
    outcome = "no error"
except BaseException as exc:
    outcome = type(exc).__name__
print(f"{{time.perf_counter() - start:.2f}}\\t{{outcome}}")
"""
CASES = {
    "hub model, before: AutoTokenizer.from_pretrained": (
        "from transformers import AutoTokenizer", "AutoTokenizer.from_pretrained('org/x')"),
    "hub model, now: models.resolve (one probe)": (
        "from aplot_cli import models; import transformers", "models.resolve('org/x')"),
    "ray --address, before: ray.init": (
        "import ray", "ray.init(address=sys.argv[1], logging_level='error')"),
    "ray --address, now: executors.check_address": (
        "from aplot_cli.compare import executors; import ray", "executors.check_address(sys.argv[1])"),
}


def run_case(imports: str, call: str, address: str) -> tuple[float, str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                             "HF_DATASETS_OFFLINE")}
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _TIMED.format(imports=imports, call=call), address],
                          capture_output=True, text=True, env=env, timeout=1200)
    wall = time.perf_counter() - start
    last = [line for line in done.stdout.splitlines() if "\t" in line]
    if not last:
        raise SystemExit(f"{call}: no timing ({done.stderr[-500:]})")
    seconds, outcome = last[-1].split("\t")
    return float(seconds), outcome, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="10.255.255.1:6379", help="a Ray address that does not answer")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "fail_fast.md"))
    args = parser.parse_args()
    rows = []
    for name, (imports, call) in CASES.items():
        seconds, outcome, wall = run_case(imports, call, args.address)
        print(f"{name}: {seconds:.1f} s ({outcome}; process {wall:.1f} s)", flush=True)
        rows.append(f"| {name} | {seconds:.1f} | {outcome} | {wall:.1f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = "\n".join([
        "# Time to fail: hub models and Ray addresses that are not there",
        "",
        f"`bench/fail_fast.py --address {args.address}` on {platform.machine()} ({os.cpu_count()} cores, load "
        f"average {load:.1f} when it finished). Seconds from the call to its error, libraries already imported; "
        "`process` adds the interpreter's start and the imports. No HF_*_OFFLINE is set; the hub is whatever "
        "this machine reaches (here: no DNS for huggingface.co).",
        "",
        "| case | seconds | raised | process s |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
    ])
    Path(args.results).write_text(text, encoding="utf-8")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
