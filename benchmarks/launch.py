"""The fleetwatch CLI in a child process, as ``fleetwatch ...`` runs, reporting its peak memory:
what the benchmarks that time whole commands (``score.py``, ``fleet.py``) launch."""

from __future__ import annotations

_RUN = """
import atexit, json, resource, sys
from fleetwatch.cli import run

@atexit.register
def report():
    # VmHWM, not ru_maxrss: after fork + exec, ru_maxrss still counts the benchmark process
    status = open("/proc/self/status").read().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"self_mib": peak / 1024, "child_mib": children / 1024}), file=sys.stderr)

run(sys.argv[1:])
"""


def launcher(prelude: str = "") -> str:
    """Python code (for ``python -c CODE ARGS...``) that runs ``fleetwatch ARGS...`` after
    ``prelude`` (an A/B switch) and prints, as the last line of its stderr, the JSON
    ``{"self_mib": ..., "child_mib": ...}``: the peak RSS of the command's process and of
    its largest child (a worker)."""
    return prelude.strip() + "\n" + _RUN
