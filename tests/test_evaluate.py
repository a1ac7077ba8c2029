"""Evaluation: watershed tuning, per-patient aggregation, Table 1, and the two CLIs end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from nucseg.data import TNBCImage, instance_distance, mask_to_instances
from nucseg.evaluate import TABLE_COLUMNS, format_table, per_patient, summarise, tune_postprocess, write_results


def _touching_pair() -> TNBCImage:
    labels = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 100] = 1
    labels[((yy - 20) ** 2 + (xx - 39) ** 2 <= 100) & (labels == 0)] = 2
    labels[:, 29] = 0  # one background column between them, as in TNBC's GT
    mask = labels > 0
    return TNBCImage("01", "01_1", np.zeros((40, 60, 3), np.uint8), mask, mask_to_instances(mask))


def test_tuning_finds_parameters_that_split_touching_nuclei():
    im = _touching_pair()
    # A map like the default model's: p * (0.5 + 0.5 d), but with the gap column filled in,
    # so only a small enough lam splits the pair.
    d = instance_distance(im.labels)
    d[:, 29] = np.maximum(d[:, 28], d[:, 30]) * 0.3
    fg = im.mask.copy()
    fg[:, 29] = im.mask[:, 28] & im.mask[:, 30]
    m = (fg * (0.5 + 0.5 * d)).astype(np.float32)
    lam, thr, score = tune_postprocess(None, [im], maps=[m], lams=(0.02, 0.5), thresholds=(0.25, 0.9))
    assert (lam, thr) == (0.02, 0.25)
    assert score > 0.85
    with pytest.raises(ValueError, match="empty"):
        tune_postprocess(None, [], maps=[])


def _row(method, patient, f1, aji=0.5):
    base = {key: 0.5 for key, _ in TABLE_COLUMNS}
    return {"method": method, "patient": patient, "image": "x", **base, "f1": f1, "aji": aji}


def test_mean_and_std_over_patients_not_images():
    rows = [_row("A", "01", 0.8), _row("A", "01", 1.0), _row("A", "02", 0.5), _row("B", "01", 0.2)]
    pp = per_patient(rows)
    assert {(r["method"], r["patient"]): r["f1"] for r in pp} == {("A", "01"): 0.9, ("A", "02"): 0.5, ("B", "01"): 0.2}
    s = {r["method"]: r for r in summarise(rows)}
    assert s["A"]["f1_mean"] == pytest.approx(0.7)
    assert s["A"]["f1_std"] == pytest.approx(np.std([0.9, 0.5], ddof=1))
    assert s["A"]["patients"] == 2 and s["B"]["f1_std"] == 0.0
    table = format_table(summarise(rows))
    assert table.splitlines()[0].split()[:8] == ["Method", "n", "Acc", "IU", "Recall", "Prec", "F1", "Perf"]
    assert "0.700 ± 0.283" in table


def test_pooled_f1_weighs_images_by_their_pixels():
    from nucseg.metrics import evaluate

    # Image 1: a 2x10 nucleus found exactly (F1 1); image 2: a 1x2 nucleus missed half (tp 1, fn 1: F1 2/3).
    gt1 = np.zeros((4, 10), np.int32)
    gt1[:2] = 1
    gt2 = np.zeros((4, 10), np.int32)
    gt2[0, :2] = 1
    pred2 = np.zeros((4, 10), np.int32)
    pred2[0, 0] = 1
    rows = [{"method": "A", "patient": p, "image": p, **evaluate(g, q)} for p, g, q in (("01", gt1, gt1), ("02", gt2, pred2))]
    assert (rows[1]["pixel_tp"], rows[1]["pixel_fp"], rows[1]["pixel_fn"]) == (1, 0, 1)
    s = summarise(rows)[0]
    assert s["f1_mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["f1_pooled"] == pytest.approx(2 * 21 / (2 * 21 + 0 + 1))
    assert "f1_pooled" not in summarise([_row("A", "01", 0.8)])[0]
    assert format_table([s]).splitlines()[-1] == f"Pixel F1 pooled over all images (not per patient): A {s['f1_pooled']:.3f}"


def test_write_results(tmp_path):
    rows = [_row("A", "01", 0.8), _row("A", "02", 0.6)]
    paths = write_results(tmp_path, rows, {"note": "x"})
    with open(paths["summary_csv"]) as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 1 and float(summary[0]["f1_mean"]) == pytest.approx(0.7)
    doc = json.loads(paths["json"].read_text())
    assert doc["note"] == "x" and len(doc["images"]) == 2 and len(doc["patients"]) == 2


# ------------------------------------------------------------------ CLIs


def _folder(root, patients=("01", "02"), size=64):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for p in patients:
        (root / f"Slide_{p}").mkdir(parents=True)
        (root / f"GT_{p}").mkdir(parents=True)
        for k in (1, 2):
            mask = np.zeros((size, size), bool)
            for cy, cx in rng.uniform(8, size - 8, (6, 2)):
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 30
            rgb = np.where(mask[..., None], [90, 50, 140], [230, 170, 200]).astype(np.uint8)
            Image.fromarray(rgb, "RGB").save(root / f"Slide_{p}" / f"{p}_{k}.png")
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(root / f"GT_{p}" / f"{p}_{k}.png")
    return root


def test_cli_help_is_instant_and_has_examples(capsys):
    from nucseg.cli import eval as cli_eval
    from nucseg.cli import train as cli_train

    for mod in (cli_train, cli_eval):
        with pytest.raises(SystemExit) as e:
            mod.main(["--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from nucseg.cli import eval as cli_eval
    from nucseg.cli import train as cli_train

    assert cli_train.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nucseg-train: error: TNBC folder not found") and err.count("\n") == 1
    assert cli_eval.main(["--data", str(tmp_path), "--run", str(tmp_path / "r"), "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # A flag the leave-one-dataset-out mode cannot honour is refused, not ignored.
    assert cli_eval.main(["--lodo", str(tmp_path), "--cache", str(tmp_path), "--tta", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--tta is not available with --lodo" in err and err.count("\n") == 1


def test_cli_train_then_eval_end_to_end(tmp_path, capsys):
    pytest.importorskip("torch")
    from nucseg.cli import eval as cli_eval
    from nucseg.cli import train as cli_train

    data = _folder(tmp_path / "tnbc")
    run = tmp_path / "cv"
    args = ["--data", str(data), "--out", str(run), "--cv", "lopo", "--iterations", "2", "--crop", "32", "--batch-size", "2"]
    assert cli_train.main(args + ["--arch-kwargs", '{"width": 4, "depth": 2}', "--quiet"]) == 0
    split = json.loads((run / "fold_00" / "split.json").read_text())
    assert split["test_patients"] == ["01"] and split["train_patients"] == ["02"]
    assert (run / "fold_01" / "default.safetensors").is_file()
    out = tmp_path / "eval"
    assert cli_eval.main(["--data", str(data), "--run", str(run), "--name", "Tiny", "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "Tiny" in table and "Baseline (no learning)" in table and "AJI" in table
    with open(out / "patients.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["patient"]) for r in rows if r["method"] == "Tiny") == [("Tiny", "01"), ("Tiny", "02")]


def test_remove_small_matches_scikit_image():
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import relabel_sequential

    from nucseg.evaluate import remove_small

    rng = np.random.default_rng(0)
    labels = mask_to_instances(rng.random((60, 60)) > 0.55)
    for area in (0, 1, 3, 10):
        got = remove_small(labels, area)
        ref = relabel_sequential(remove_small_objects(labels, max_size=area - 1) if area > 1 else labels)[0]
        np.testing.assert_array_equal(got, ref)
        assert got.dtype == np.int32
    with pytest.raises(ValueError, match="min_area"):
        remove_small(labels, -1)


def test_tuning_can_choose_a_minimum_area():
    im = _touching_pair()
    m = (instance_distance(im.labels) > 0).astype(np.float32)
    m[2:4, 2:4] = 1.0  # a 4-px speck that is not a nucleus
    lam, thr, area, score = tune_postprocess(None, [im], maps=[m], lams=(0.1,), thresholds=(0.5,), min_areas=(0, 30))
    assert area == 30 and score == pytest.approx(1.0)


def test_cli_train_augment_option(tmp_path, capsys):
    pytest.importorskip("torch")
    from nucseg.cli import train as cli_train

    data = _folder(tmp_path / "tnbc")
    tiny = ["--data", str(data), "--iterations", "1", "--crop", "32", "--batch-size", "2", "--arch-kwargs", '{"width": 4, "depth": 2}', "--no-tune", "--quiet"]
    light = '{"rotate": false, "scale": [1, 1], "elastic_alpha": 0}'
    assert cli_train.main(tiny + ["--out", str(tmp_path / "r"), "--augment", light]) == 0
    aug = json.loads((tmp_path / "r" / "default.json").read_text())["training"]["recipe"]["augment"]
    assert aug["rotate"] is False and aug["scale"] == [1.0, 1.0] and aug["elastic_alpha"] == 0.0 and aug["flip"] is True
    capsys.readouterr()
    for bad, msg in [("{rotate", "--augment is not valid JSON"), ("[1, 2]", "--augment must be a JSON object"),
                     ('{"wobble": 1}', "unknown augment field 'wobble'")]:
        assert cli_train.main(tiny + ["--out", str(tmp_path / "bad"), "--augment", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nucseg-train: error: ") and msg in err and err.count("\n") == 1


def test_cli_train_precision_option(tmp_path, capsys):
    pytest.importorskip("torch")
    from nucseg.cli import train as cli_train

    data = _folder(tmp_path / "tnbc")
    tiny = ["--data", str(data), "--iterations", "1", "--crop", "32", "--batch-size", "2", "--arch-kwargs", '{"width": 4, "depth": 2}', "--no-tune", "--quiet"]
    assert cli_train.main(tiny + ["--out", str(tmp_path / "r"), "--precision", "bfloat16"]) == 0
    assert json.loads((tmp_path / "r" / "default.json").read_text())["training"]["recipe"]["precision"] == "bfloat16"
    assert cli_train.main(tiny + ["--out", str(tmp_path / "f")]) == 0  # the presets' float32
    assert json.loads((tmp_path / "f" / "default.json").read_text())["training"]["recipe"]["precision"] == "float32"
    with pytest.raises(SystemExit):
        cli_train.build_parser().parse_args(["--data", "d", "--out", "o", "--precision", "float16"])


def test_cli_train_loader_workers_default(monkeypatch):
    torch = pytest.importorskip("torch")
    from nucseg.cli.train import _workers

    assert _workers(3, "cpu") == 3 and _workers(0, "cuda") == 0  # as asked
    assert _workers(None, "cpu") == 0
    monkeypatch.setattr("nucseg.cli.train.usable_cpus", lambda: 16)  # the CPUs this process may use
    assert _workers(None, "cuda") == 8 and _workers(None, "cuda:1") == 8
    monkeypatch.setattr("nucseg.cli.train.usable_cpus", lambda: 2)
    assert _workers(None, "cuda") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _workers(None, None) == 1  # auto picks the GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _workers(None, None) == 0


def test_cli_train_init_weights_per_fold_and_leakage(tmp_path, capsys):
    pytest.importorskip("torch")
    from nucseg.cli import train as cli_train

    data = _folder(tmp_path / "tnbc")
    tiny = ["--data", str(data), "--iterations", "1", "--crop", "32", "--batch-size", "2", "--arch-kwargs", '{"width": 4, "depth": 2}', "--no-tune", "--quiet"]
    assert cli_train.main(tiny + ["--out", str(tmp_path / "cv"), "--cv", "lopo"]) == 0
    # Each fold continues the earlier run's model of the same fold.
    assert cli_train.main(tiny + ["--out", str(tmp_path / "more"), "--cv", "lopo", "--init-weights", str(tmp_path / "cv")]) == 0
    for i in (0, 1):
        rec = json.loads((tmp_path / "more" / f"fold_{i:02d}" / "default.json").read_text())["training"]["init_weights"]
        assert rec["path"] == str(tmp_path / "cv" / f"fold_{i:02d}" / "default.safetensors")
    # A folder needs --cv, and its folds must hold out the same patients.
    assert cli_train.main(tiny + ["--out", str(tmp_path / "y"), "--init-weights", str(tmp_path / "cv")]) == 2
    assert "is a folder; without --cv" in capsys.readouterr().err
    split = tmp_path / "cv" / "fold_00" / "split.json"
    split.write_text(json.dumps({**json.loads(split.read_text()), "test_patients": ["02"]}))
    assert cli_train.main(tiny + ["--out", str(tmp_path / "z"), "--cv", "lopo", "--init-weights", str(tmp_path / "cv")]) == 2
    assert "held out ['02'], this fold holds out ['01']" in capsys.readouterr().err
    # A model trained on every patient has seen each fold's held-out patient: refused.
    assert cli_train.main(tiny + ["--out", str(tmp_path / "all")]) == 0
    leak = tiny + ["--out", str(tmp_path / "leak"), "--cv", "lopo", "--init-weights", str(tmp_path / "all" / "default.safetensors")]
    assert cli_train.main(leak) == 2
    err = capsys.readouterr().err
    assert "was trained on images of patients ['01']" in err and err.count("\n") == 1
    # The bundled model (trained on all 9 TNBC patients) as a starting point, without CV.
    base = ["--data", str(data), "--iterations", "1", "--crop", "32", "--batch-size", "2", "--no-tune", "--quiet"]
    assert cli_train.main(base + ["--out", str(tmp_path / "ft"), "--init-weights", "default"]) == 0
    rec = json.loads((tmp_path / "ft" / "default.json").read_text())["training"]["init_weights"]
    assert rec["patients"] == ["01", "02", "04", "05", "06", "07", "09", "10", "11"]
    # Other images under the same patient ids: the bundled model never saw them, so CV may start from it.
    assert cli_train.main(base + ["--out", str(tmp_path / "ftcv"), "--cv", "lopo", "--init-weights", "default"]) == 0
    assert cli_train.main(tiny + ["--out", str(tmp_path / "x"), "--init-weights", str(tmp_path / "missing")]) == 2
    assert "--init-weights" in capsys.readouterr().err


@pytest.mark.parametrize("bundled", ["default", "multiorgan", "default+multiorgan"])
def test_cli_train_refuses_the_bundled_model_for_cv_on_tnbc(tnbc_dir, tmp_path, capsys, bundled):
    pytest.importorskip("torch")
    from nucseg.cli import train as cli_train

    # Both bundled models trained on all 41 TNBC images: a fold that starts from one would not be held out.
    args = ["--data", str(tnbc_dir), "--out", str(tmp_path / "cv"), "--cv", "kfold", "--init-weights", bundled, "--quiet"]
    assert cli_train.main(args) == 2
    assert "was trained on images of patients ['04', '06', '11'], which fold 0 holds out" in capsys.readouterr().err
