"""Bring trained runs back from a lent GPU machine within the device tool's limits.

The tool returns at most 8 files of at most 16 MB each (64 MB together), so a width-32
model (31 MB in float32) cannot come back as is.

  pack OUT RUN...     on the GPU machine: one meta.tar.gz with every run's JSON files, and
                      one weights file per run, float32 when it fits in 15 MB, else rounded
                      to float16 (named *.f16.safetensors)
  unpack SRC DEST     here: rebuild each run at its path under DEST (weights back to float32, the JSON's
                      sha256 updated, a `transfer` note added to its training record when
                      the weights were rounded)

Weights files are named for the run's flattened path (runs/gpu_cv/fold_00 ->
runs_gpu_cv_fold_00.safetensors); `unpack ... /tmp/x` rebuilds /tmp/x/runs/gpu_cv/fold_00.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

LIMIT = 15 * 2**20
JSONS = ("default.json", "checkpoint.json", "split.json")


def _flat(run: str) -> str:
    return run.strip("/").replace("/", "_")


def pack(out: Path, runs: list[str]) -> None:
    from safetensors.torch import load_file, save_file

    with tarfile.open(out / "meta.tar.gz", "w:gz") as tar:
        for run in runs:
            for name in JSONS:
                if (Path(run) / name).is_file():
                    tar.add(Path(run) / name, arcname=f"{run.strip('/')}/{name}")
    for run in runs:
        weights = Path(run) / "default.safetensors"
        if weights.stat().st_size <= LIMIT:
            (out / f"{_flat(run)}.safetensors").write_bytes(weights.read_bytes())
        else:
            tensors = load_file(str(weights))
            half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
            save_file(half, str(out / f"{_flat(run)}.f16.safetensors"))


def unpack(src: Path, dest: Path) -> None:
    from safetensors.torch import load_file, save_file

    with tarfile.open(src / "meta.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    for run_dir in sorted(p.parent for p in dest.rglob("default.json")):
        flat = _flat(str(run_dir.relative_to(dest)))
        exact, rounded = src / f"{flat}.safetensors", src / f"{flat}.f16.safetensors"
        weights = run_dir / "default.safetensors"
        doc = json.loads((run_dir / "default.json").read_text())
        if exact.is_file():
            weights.write_bytes(exact.read_bytes())
        else:
            tensors = load_file(str(rounded))
            save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, str(weights))
            doc["training"]["transfer"] = "weights rounded to float16 to come back from the GPU machine"
        doc["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        (run_dir / "default.json").write_text(json.dumps(doc, indent=1))
        print(run_dir, doc["sha256"][:12])


if __name__ == "__main__":
    verb, first, *rest = sys.argv[1:]
    if verb == "pack":
        pack(Path(first), rest)
    elif verb == "unpack":
        unpack(Path(first), Path(rest[0]))
    else:
        sys.exit(f"unknown verb {verb!r}: expected pack or unpack")
