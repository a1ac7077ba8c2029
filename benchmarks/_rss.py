"""Peak resident memory of this process, for benchmarks that measure it in a fresh child."""

from __future__ import annotations


def peak_rss_bytes() -> int:
    """Peak resident set size of this process image, in bytes.

    Reads ``VmHWM`` from ``/proc/self/status``, which exec resets. ``ru_maxrss`` is only
    the fallback (not Linux): on Linux it carries the peak of the pytest parent that
    forked this process, so under a large test process it never moves.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
