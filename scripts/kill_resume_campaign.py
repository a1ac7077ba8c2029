#!/usr/bin/env python3
"""Kill -9 the whole-slide runner at random points, resume it, compare with a clean run.

Each run starts ``nucseg-wsi`` (``python -m nucseg.cli.wsi``) on a small synthetic slide
with a slowed-down hematoxylin predictor, sends SIGKILL at a random time between the process
start and the end of an uninterrupted run (stratified: run i of N in the i-th N-th of it),
then finishes the store with ``nucseg-wsi --resume`` (every other run also has its first
resume killed, and resumes again). The final store must equal the uninterrupted reference label for label: every
pyramid level of the labels, the probability map and the per-nucleus Parquet table.

Examples
--------
The full campaign (about 3 minutes on one core)::

    python scripts/kill_resume_campaign.py --runs 24 --seed 0

A quick one, as the test suite runs it::

    python scripts/kill_resume_campaign.py --runs 5 --json results.json

Kill Dask runs (2 local workers, the whole process group) and resume single-process::

    python scripts/kill_resume_campaign.py --runs 20 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Seconds the slow predictor sleeps per batch, so a kill can land inside the tile loop.
SLOW_SECONDS = 0.12
TILE, HALO, SIZE = 128, 64, 512


def make_slow() -> Any:
    """Factory for ``--model kill_resume_campaign:make_slow``: the hematoxylin predictor,
    slower per batch; same config and checksum, so a fast ``--resume`` accepts its store."""
    from nucseg.wsi.predictors import HematoxylinPredictor

    class SlowHematoxylin(HematoxylinPredictor):
        def predict(self, rgb: np.ndarray) -> np.ndarray:
            time.sleep(SLOW_SECONDS)
            return super().predict(rgb)

    return SlowHematoxylin()


@dataclass
class RunResult:
    """One kill-and-resume run."""

    run: int
    kill_at: float
    phase: str  # where the kill landed: before-store, creating-store, mid-tiles, finishing, after-complete, exited
    records_at_kill: int
    partial_writes: int  # *.tmp files or table parts without a completion record
    resume_killed: bool
    equal: bool
    mismatch: list[str] = field(default_factory=list)
    litter: int = 0  # temporary files still in the store after the final resume


# The child drops editable-install import hooks so that PYTHONPATH decides which nucseg runs
# (the snapshot, or this checkout), then runs the nucseg-wsi command.
_BOOT = (
    "import os, sys\n"
    "if os.environ.get('NUCSEG_CAMPAIGN_FROZEN'):\n"
    "    sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__]\n"
    "from nucseg.cli.wsi import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def snapshot_package(folder: Path) -> Path:
    """Copy the installed nucseg (sources and compiled core) to ``folder/pkg``.

    The campaign then runs this frozen copy, so edits made to the checkout while it runs
    cannot make the reference and the resumed stores come from different code.
    """
    import shutil

    import nucseg
    import nucseg._core

    src = Path(nucseg.__file__).resolve().parent
    dest = folder / "pkg" / "nucseg"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    core = Path(nucseg._core.__file__)
    if not (dest / core.name).exists():
        shutil.copy2(core, dest / core.name)
    return dest.parent


def _env(pkg: Path | None = None) -> dict[str, str]:
    import nucseg

    env = dict(os.environ)
    root = pkg if pkg is not None else Path(nucseg.__file__).resolve().parents[1]
    paths = [str(Path(__file__).resolve().parent), str(root)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if pkg is not None:
        env["NUCSEG_CAMPAIGN_FROZEN"] = "1"
    else:
        env.pop("NUCSEG_CAMPAIGN_FROZEN", None)
    return env


def _args(slide: Path, out: Path, model: str, *extra: str, workers: int = 0) -> list[str]:
    return [
        sys.executable, "-c", _BOOT, str(slide), str(out), "--model", model,
        "--tile", str(TILE), "--halo", str(HALO), "--tissue", "none", "--threads", "1",
        "--batch-size", "1", "--save-prob", "--quiet", *extra,
        *(["--workers", str(workers)] if workers else []),
    ]


def make_slide(folder: Path, seed: int = 7) -> Path:
    """A small synthetic H&E slide (512 x 512 at 0.25 um/px, 2 levels): 16 tiles of 128 px."""
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff

    rgb, _, _ = synthetic_he((SIZE, SIZE), seed=seed, tissue_fraction=1.0)
    return write_pyramid_tiff(folder / "campaign.tif", rgb, mpp=0.25, levels=2)


def classify(out: Path, n_tiles: int) -> tuple[str, int, int]:
    """Where a kill landed, judged from what it left: phase, records, partial writes."""
    if not (out / "zarr.json").is_file():
        return "before-store", 0, 0
    from nucseg.wsi.store import read_meta

    meta = read_meta(out)
    if meta is None or meta.get("status") == "creating":  # the store's folder exists, its run metadata not yet
        return "creating-store", 0, 0
    records = {p.stem for p in (out / "nucseg" / "tiles").glob("*.json")}
    parts = {p.stem for p in (out / "nucseg" / "parts").glob("*.parquet")}
    tmps = list(out.rglob("*.tmp")) + list(out.rglob("*.partial"))  # ours, zarr's
    partial = len(tmps) + len(parts - records)
    if meta.get("status") == "complete":
        return "after-complete", len(records), partial
    if len(records) < n_tiles:
        return "mid-tiles", len(records), partial
    return "finishing", len(records), partial


def compare(ref: Path, out: Path) -> list[str]:
    """Names of the arrays or tables that differ between two stores (empty: equal)."""
    import pyarrow.parquet as pq
    import zarr

    bad = []
    names = [f"labels/nuclei/{k}" for k in range(8) if (ref / "labels" / "nuclei" / str(k)).is_dir()] + ["prob/0"]
    for name in names:
        a = zarr.open_array(str(ref / name), mode="r")[...]
        try:
            b = zarr.open_array(str(out / name), mode="r")[...]
        except Exception:  # noqa: BLE001 - a missing array is a mismatch
            bad.append(name)
            continue
        if a.shape != b.shape or not np.array_equal(a, b):
            bad.append(name)
    ta = pq.read_table(ref / "nucseg" / "nuclei.parquet")
    try:
        tb = pq.read_table(out / "nucseg" / "nuclei.parquet")
        if not ta.equals(tb):
            bad.append("nuclei.parquet")
    except Exception:  # noqa: BLE001
        bad.append("nuclei.parquet")
    ma, mb = json.loads((ref / "zarr.json").read_text()), json.loads((out / "zarr.json").read_text())
    a_meta, b_meta = ma["attributes"]["nucseg"], mb["attributes"]["nucseg"]
    for key in ("status", "nuclei", "tiles_done", "approximate_nuclei", "settings"):
        if a_meta.get(key) != b_meta.get(key):
            bad.append(f"meta.{key}")
    return bad


def _kill_after(cmd: list[str], delay: float, env: dict[str, str]) -> bool:
    """Run ``cmd`` and SIGKILL it after ``delay`` seconds; False if it had already exited."""
    # Own session: the kill takes the whole process group (Dask nannies and workers too),
    # as a node failure or an OOM kill of the job would.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        proc.wait(timeout=delay)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"the run failed before the kill: {err.strip()}")
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        return True
    finally:
        if proc.stderr:
            proc.stderr.close()


def _kill_when(cmd: list[str], ready: Callable[[], bool], env: dict[str, str], timeout: float = 300.0) -> bool:
    """Run ``cmd`` and SIGKILL it as soon as ``ready()`` holds; False if it exited first.

    A kill tied to an event lands in the same phase whatever the machine's load, where a
    kill after a fixed delay drifts with it (a loaded CI machine runs slower than the timing run).
    """
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                return True
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            raise RuntimeError(f"the run did not reach the kill point within {timeout:.0f} s")
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"the run failed before the kill: {err.strip()}")
        return False
    finally:
        if proc.stderr:
            proc.stderr.close()


def _first_tile_recorded(out: Path) -> Callable[[], bool]:
    """True once the run has recorded its first tile: the kill then lands mid-tiles."""
    tiles = out / "nucseg" / "tiles"
    return lambda: tiles.is_dir() and any(tiles.glob("*.json"))


def _resume(slide: Path, out: Path, env: dict[str, str]) -> str:
    """Finish ``out`` with ``nucseg-wsi --resume``; returns its error line ("" on success)."""
    # A kill before the store existed leaves nothing to resume: the rerun starts fresh.
    extra = ["--resume"] if out.exists() else []
    done = subprocess.run(_args(slide, out, "hematoxylin", *extra), env=env, capture_output=True, text=True)
    if done.returncode == 0:
        return ""
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]


def run_campaign(
    runs: int, seed: int, folder: Path, *, progress: bool = True, snapshot: bool = True, workers: int = 0
) -> dict[str, Any]:
    """Run the campaign in ``folder``; return the figures and the per-run results.

    Parameters
    ----------
    runs : int
        Kill-and-resume runs (each on its own output store).
    seed : int
        Seed of the kill times.
    folder : Path
        Scratch folder (slide, reference and one store per run, deleted as it goes).
    progress : bool
        Print one line per run.
    snapshot : bool
        Run a frozen copy of the installed package (:func:`snapshot_package`) rather
        than the live checkout.
    workers : int
        0: the single-process runner. N > 0: the killed runs use the Dask runner with N
        local workers (``--workers N``; the kill takes the whole process group), and the
        final ``--resume`` is single-process (it merges the Dask run's spill files).
    """
    import shutil

    rng = random.Random(seed)
    env = _env(snapshot_package(folder) if snapshot else None)
    slide = make_slide(folder)
    ref = folder / "ref.zarr"
    t0 = time.monotonic()
    subprocess.run(_args(slide, ref, "kill_resume_campaign:make_slow"), env=env, check=True)
    t_full = time.monotonic() - t0
    dask_ref_equal = None
    if workers:  # time the clean Dask run (the kill window), and check it equals the reference
        t0 = time.monotonic()
        dask_ref = folder / "dask_ref.zarr"
        subprocess.run(_args(slide, dask_ref, "kill_resume_campaign:make_slow", workers=workers), env=env, check=True)
        t_full = time.monotonic() - t0
        dask_ref_equal = compare(ref, dask_ref) == []
    n_tiles = (SIZE // TILE) ** 2
    results = []
    for i in range(runs):
        out = folder / f"run{i:03d}.zarr"
        # Stratified: run i is killed in the i-th slice of [0, 1.05 x the clean run's time];
        # the middle run is killed on an event instead (its first tile recorded), so at least
        # one kill lands inside the tile loop however loaded the machine is.
        kill_at = (i + rng.random()) / runs * t_full * 1.05
        cmd = _args(slide, out, "kill_resume_campaign:make_slow", workers=workers)
        if i == runs // 2:
            t_kill = time.monotonic()
            killed = _kill_when(cmd, _first_tile_recorded(out), env)
            kill_at = time.monotonic() - t_kill
        else:
            killed = _kill_after(cmd, kill_at, env)
        phase, n_rec, partial = classify(out, n_tiles) if killed else ("exited", n_tiles, 0)
        resume_killed = False
        if i % 2 == 1 and killed:  # kill the first resume too, at a random point
            resume_killed = _kill_after(
                _args(
                    slide, out, "kill_resume_campaign:make_slow", *(["--resume"] if out.exists() else []),
                    workers=workers,
                ),
                rng.uniform(0.0, t_full),
                env,
            )
        error = _resume(slide, out, env)
        litter = len(list(out.rglob("*.tmp"))) + len(list(out.rglob("*.partial")))
        bad = [f"resume failed: {error}"] if error else compare(ref, out)
        results.append(RunResult(i, round(kill_at, 3), phase, n_rec, partial, resume_killed, not bad, bad, litter))
        if progress:
            print(
                f"run {i:3d}: kill at {kill_at:5.2f}s ({phase}, {n_rec}/{n_tiles} tiles recorded, "
                f"{partial} partial writes){' + resume killed' if resume_killed else ''} -> "
                f"{'EQUAL' if not bad else 'DIFFERENT: ' + ', '.join(bad)}",
                flush=True,
            )
        shutil.rmtree(out, ignore_errors=True)
    phases: dict[str, int] = {}
    for r in results:
        phases[r.phase] = phases.get(r.phase, 0) + 1
    return {
        "runs": runs,
        "seed": seed,
        "runner": f"dask, {workers} workers" if workers else "single process",
        "clean_dask_run_equal": dask_ref_equal,
        "tiles": n_tiles,
        "uninterrupted_seconds": round(t_full, 2),
        "phases": phases,
        "mid_tile_kills": phases.get("mid-tiles", 0),
        "kills_with_partial_writes": sum(r.partial_writes > 0 for r in results),
        "resumes_killed": sum(r.resume_killed for r in results),
        "stores_with_litter": sum(r.litter > 0 for r in results),
        "resumes_refused": sum(any(m.startswith("resume failed") for m in r.mismatch) for r in results),
        "all_equal": all(r.equal for r in results),
        "results": [asdict(r) for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python scripts/kill_resume_campaign.py --runs 24 --seed 0\n"
        "  python scripts/kill_resume_campaign.py --runs 5 --json results.json\n"
        "  python scripts/kill_resume_campaign.py --runs 20 --workers 2   # kill Dask runs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=24, help="kill-and-resume runs (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times (default 0)")
    p.add_argument("--json", type=Path, default=None, help="write the figures and per-run results there")
    p.add_argument("--quiet", action="store_true", help="no per-run lines")
    p.add_argument("--live", action="store_true", help="run the checkout's code, not a frozen copy of it")
    p.add_argument("--workers", type=int, default=0, help="kill Dask runs with N local workers (default 0: no Dask)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.workers < 0:
        print("error: --runs must be at least 1 and --workers at least 0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nucseg-kill-") as tmp:
        figures = run_campaign(
            args.runs, args.seed, Path(tmp), progress=not args.quiet, snapshot=not args.live, workers=args.workers
        )
    summary = {k: v for k, v in figures.items() if k != "results"}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
