"""Run `aplot ARGS...` in this process and print its peak resident memory (MiB) as JSON on stderr's last line."""

import json
import resource
import sys

from aplot_cli.cli import app

if __name__ == "__main__":
    try:
        app(sys.argv[1:], standalone_mode=False)
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"peak_rss_mib": round(peak, 1)}), file=sys.stderr)
