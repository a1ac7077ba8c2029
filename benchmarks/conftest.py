"""Summary table for the benchmarks: Mpix/s of each method and nucseg's speed-up over it."""

from __future__ import annotations

from collections import defaultdict


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    session = getattr(config, "_benchmarksession", None)
    benches = getattr(session, "benchmarks", None) or []
    rows = defaultdict(dict)
    extras = []
    for bench in benches:
        info = bench.extra_info
        if "mpix" in info:
            rows[(info["size"], info["dtype"])][info["method"]] = info["mpix"] / bench.stats.min
        elif info:
            extras.append((bench.group, info))
    if not rows and not extras:
        return
    write = terminalreporter.write_line
    write("")
    if rows:
        write("throughput (Mpix/s, best of rounds; ratio = nucseg / method)")
    for (size, dtype), methods in sorted(rows.items()):
        ours = methods.get("nucseg")
        for method, mpix in sorted(methods.items(), key=lambda kv: -kv[1]):
            ratio = f"{ours / mpix:7.2f}x" if ours else "   n/a"
            write(f"  {size}x{size} {dtype:26s} {method:32s} {mpix:9.1f} Mpix/s  {ratio}")
    if extras:
        write("other measurements")
    for group, info in extras:
        write(f"  {group}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in info.items()))
