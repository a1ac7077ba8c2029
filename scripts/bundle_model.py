"""Copy a trained model into the package as a bundled model (``nucseg.load_model(NAME)``).

    python scripts/bundle_model.py /work/runs13/all/multiorgan.safetensors multiorgan \
        --licence CC-BY-NC-SA-4.0 --terms "non-commercial ..." \
        --data "tnbc: ..." --data "monuseg2018_train: ..."

Writes ``python/nucseg/models/weights/NAME.{safetensors,json}``: the weights unchanged (their
sha256 checked against the JSON), the config renamed NAME, the training record kept (with
the local path of the initial weights replaced by the bundled model's name), and a
``licence`` entry: the terms the weights inherit from their training data (docs/DATA.md).
Refuses a model trained on the MoNuSeg 2018 test patients or on a source whose licence does
not allow publishing weights. Add NAME to ``nucseg.inference.BUNDLED_MODELS`` afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

# Sources whose weights may be redistributed (docs/DATA.md): CPM-15, GBM40 and CoNSeP are not
# cleared; the MoNuSeg 2018 test images are never trained on.
PUBLISHABLE = {"tnbc", "monuseg2018_train", "dsb2018_he"}
WEIGHTS = Path(__file__).resolve().parents[1] / "python" / "nucseg" / "models" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="the trained .safetensors (its .json beside it)")
    ap.add_argument("name")
    ap.add_argument("--licence", required=True, help="SPDX id of the terms the weights inherit")
    ap.add_argument("--terms", required=True, help="the terms in one sentence")
    ap.add_argument("--data", action="append", required=True, help="'source: credit and licence', one per source")
    args = ap.parse_args()

    from nucseg.datasets import is_monuseg_test

    doc = json.loads(args.model.with_suffix(".json").read_text())
    digest = hashlib.sha256(args.model.read_bytes()).hexdigest()
    if digest != doc["sha256"]:
        raise SystemExit(f"{args.model}: sha256 {digest} is not the JSON's {doc['sha256']}")
    training = doc["training"]
    sources = set(training.get("sources") or ())
    if not sources or not sources <= PUBLISHABLE:
        raise SystemExit(f"trained on {sorted(sources)}: only {sorted(PUBLISHABLE)} may be published")
    if any(is_monuseg_test(p) for p in training.get("patients", ())):
        raise SystemExit("trained on a MoNuSeg 2018 test patient")
    if not all(any(d.startswith(f"{s}: ") for d in args.data) for s in sources):
        raise SystemExit(f"--data must credit every source: {sorted(sources)}")
    init = training.get("init_weights")
    if isinstance(init, dict) and init.get("path"):
        bundled = {hashlib.sha256(p.read_bytes()).hexdigest(): p.stem for p in WEIGHTS.glob("*.safetensors")}
        init["path"] = f"bundled:{bundled[init['sha256']]}" if init.get("sha256") in bundled else Path(init["path"]).name
    doc["config"]["name"] = args.name
    doc["licence"] = {"spdx": args.licence, "data": args.data, "terms": args.terms}
    shutil.copyfile(args.model, WEIGHTS / f"{args.name}.safetensors")
    (WEIGHTS / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{WEIGHTS / args.name}.{{safetensors,json}}: sha256 {digest}, trained on {sorted(sources)}")


if __name__ == "__main__":
    main()
