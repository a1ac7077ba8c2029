"""A union model's TNBC CV fold with its watershed re-tuned on that fold's TNBC training patients.

The union recipe tunes lam / threshold / min_area on a few images of every training source
(scripts/multiorgan.py); this re-tunes them on the fold's TNBC training patients only (never the
held-out ones: the model JSON's ``tnbc_held_out_patients``) and scores the held-out patients with
both recipes, to measure what per-source tuning is worth (docs/RESULTS.md, union CV).

    PYTHONPATH=python python scripts/tnbc_retune.py --model runs/quarter/cv1/multiorgan.safetensors \\
        --data ../shared/data/tnbc
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from nucseg import PostprocessRecipe
    from nucseg.data import load_tnbc
    from nucseg.evaluate import DEFAULT_MIN_AREAS, format_table, score_images, summarise, tune_postprocess
    from nucseg.inference import load_model

    torch.set_num_threads(args.threads)
    held_out = set(json.loads(args.model.with_suffix(".json").read_text())["training"]["tnbc_held_out_patients"])
    model = load_model(args.model)
    images = load_tnbc(args.data)
    train = [im for im in images if im.patient not in held_out]
    test = [im for im in images if im.patient in held_out]
    maps = {im.name: model.predict(im.rgb) for im in images}
    lam, thr, area, score = tune_postprocess(None, train, maps=[maps[im.name] for im in train], min_areas=DEFAULT_MIN_AREAS)
    cfg = model.config
    rows = []
    for name, recipe in [
        (f"union recipe (lam {cfg.lam}, thr {cfg.threshold}, min_area {cfg.min_area})", PostprocessRecipe(cfg.lam, cfg.threshold, cfg.min_area)),
        (f"re-tuned on TNBC training patients (lam {lam}, thr {thr}, min_area {area})", PostprocessRecipe(lam, thr, area)),
    ]:
        rows += score_images(test, lambda im, r=recipe: r.labels(maps[im.name]), name)
    print(f"held out {sorted(held_out)}; TNBC training AJI with the re-tuned recipe {score:.3f}")
    print(format_table(summarise(rows)))


if __name__ == "__main__":
    main()
