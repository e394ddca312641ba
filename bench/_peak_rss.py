"""Run `aplot ARGS...` in this process and print its peak resident memory (MiB; on CUDA also the
allocator's peak) as JSON on stderr's last line."""

import json
import resource
import sys

from aplot_cli.cli import app

if __name__ == "__main__":
    try:
        app(sys.argv[1:], standalone_mode=False)
    finally:
        peak = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            peak["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            peak["peak_cuda_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        print(json.dumps(peak), file=sys.stderr)
