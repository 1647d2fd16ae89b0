"""Peak-memory reading shared by the harness's workers (stdlib only: they run in different venvs)."""
from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: Linux's VmHWM, which starts afresh at exec.
    (``ru_maxrss`` does not: a worker forked from a parent that once held gigabytes reports the
    parent's peak.) Elsewhere, ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
