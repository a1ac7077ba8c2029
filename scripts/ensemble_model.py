"""Combine trained models into one ensemble model file, its watershed tuned on their training images.

    python scripts/ensemble_model.py default multiorgan --name default+multiorgan \
        --cache /work/data_cache --tnbc ../shared/data/tnbc --out runs/ens/default+multiorgan.safetensors

The members (bundled names or model files, same resolution, normalisation and channels) become
one ``nucseg.models.Ensemble`` network: per channel, the mean of their sigmoids. Its JSON records
each member (name, sha256) and the union of their training records (sources, patients, image
digests), so `scripts/bundle_model.py`, `nucseg-eval --lodo` ("seen" cells) and the TNBC
leakage checks read it like any trained model. lam, threshold and min_area are tuned as
`scripts/multiorgan.py` tunes a trained model: on at most 6 training images per member
source, never on an evaluation source.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # multiorgan.py's loaders and tuning grid

from multiorgan import load_training_source, tune_on_training_images  # noqa: E402


def member_record(path: Path) -> dict:
    """A member's training record from its JSON. A record without ``sources`` is a
    ``nucseg-train`` run on TNBC: its patients get the ``tnbc/`` prefix multi-source runs use."""
    record = dict(json.loads(path.with_suffix(".json").read_text(encoding="utf-8")).get("training", {}))
    if "sources" not in record:
        record["sources"] = ["tnbc"]
        record["patients"] = [f"tnbc/{p}" for p in record.get("patients", [])]
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("members", nargs="+", help="bundled model names or .safetensors files (two or more)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", type=Path, required=True, help="the ensemble's .safetensors (its .json beside it)")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--tnbc", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from nucseg.datasets import SOURCES
    from nucseg.inference import BUNDLED_MODELS, NucleusModel, load_model, save_model
    from nucseg.models import Ensemble

    if len(args.members) < 2:
        raise SystemExit("an ensemble needs two or more members")
    paths = [BUNDLED_MODELS.get(m, Path(m)) for m in args.members]
    models = [load_model(p, device="cpu") for p in paths]
    first = models[0].config
    for m in models[1:]:
        c = m.config
        if (c.mpp, c.in_channels, c.out_channels, c.mean, c.std) != (first.mpp, first.in_channels, first.out_channels, first.mean, first.std):
            raise SystemExit(f"{c.name} differs from {first.name} in resolution, channels or normalisation")
    records = [member_record(p) for p in paths]
    sources = sorted({s for r in records for s in r["sources"]})
    unknown = [s for s in sources if s != "tnbc" and s not in SOURCES]
    if unknown:
        raise SystemExit(f"members trained on sources this script cannot load: {unknown}")
    config = dataclasses.replace(
        first,
        name=args.name,
        arch="ensemble",
        arch_kwargs={"members": [{"arch": m.config.arch, "arch_kwargs": m.config.arch_kwargs} for m in models]},
        stride=math.lcm(*(m.config.stride for m in models)),
        halo=max(m.config.halo for m in models),
    )
    net = Ensemble([m.net for m in models]).eval()
    union = lambda key: sorted({x for r in records for x in r.get(key, [])})  # noqa: E731
    extra = {
        "ensemble_of": [{"name": m.config.name, "sha256": m.sha256} for m in models],
        "sources": sources,
        "held_out_source": None,
        "tnbc_held_out_patients": union("tnbc_held_out_patients"),
        "patients": union("patients"),
        "image_digests": union("image_digests"),
    }

    # Tune on the members' training images as multiorgan.py tunes, on the network in memory
    # (as train() does before it saves), then save once.
    torch.set_num_threads(args.threads)
    per_source = {s: load_training_source(s, args.cache, args.tnbc, config.mpp) for s in sources}
    model = NucleusModel(config, net, sha256="", device=torch.device("cpu"))
    lam, thr, area, score = tune_on_training_images(model, per_source)
    extra["tuned_on_training_images"] = {"lam": lam, "threshold": thr, "min_area": area, "aji": round(score, 4)}
    extra["images_per_source"] = {s: len(v) for s, v in per_source.items()}
    save_model(net, dataclasses.replace(config, lam=lam, threshold=thr, min_area=area), args.out, **extra)
    print(f"{args.out}: members {[m.config.name for m in models]}, tuned lam={lam} threshold={thr} min_area={area} "
          f"(training AJI {score:.3f})")


if __name__ == "__main__":
    main()
