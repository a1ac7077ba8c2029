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
    # Each map type's nucseg time against the uint8 map's (quantised float maps: issue 21).
    for size in sorted({size for size, _ in rows}):
        base = rows.get((size, "uint8"), {}).get("nucseg")
        others = [(dtype, m["nucseg"]) for (s, dtype), m in sorted(rows.items()) if s == size and "nucseg" in m]
        if base and len(others) > 1:
            write(f"nucseg time relative to the uint8 map, {size}x{size}: "
                  + ", ".join(f"{dtype} {base / mpix:.2f}x" for dtype, mpix in others if dtype != "uint8"))
    if extras:
        write("other measurements")
    for group, info in extras:
        write(f"  {group}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in info.items()))
