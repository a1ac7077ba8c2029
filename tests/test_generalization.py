"""Tests of nucseg.generalization: the leave-one-dataset-out table and which model scores what."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nucseg.generalization import (
    LODO_METRICS,
    ENSEMBLE_ROW,
    MULTIORGAN_ROW,
    EvalImage,
    format_lodo_table,
    lodo_models,
    score,
    summarise_sources,
    trained_on,
)
from nucseg.metrics import aji


def _disks_image(seed: int) -> EvalImage:
    rng = np.random.default_rng(seed)
    labels = np.zeros((40, 40), np.int32)
    for i, (y, x) in enumerate(rng.integers(5, 35, size=(4, 2)), start=1):
        yy, xx = np.ogrid[:40, :40]
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= 9] = i
    return EvalImage("src", f"im{seed}", np.zeros((40, 40, 3), np.uint8), labels)


def test_score_and_summary_by_hand() -> None:
    images = [_disks_image(s) for s in range(3)]
    perfect = {id(im.rgb): im.labels for im in images}
    rows = score(images, lambda rgb: perfect[id(rgb)], "oracle")
    rows += score(images, lambda rgb: np.zeros(rgb.shape[:2], np.int32), "nothing")
    summary = summarise_sources(rows)
    assert summary[("oracle", "src")]["aji_mean"] == 1.0 and summary[("oracle", "src")]["aji_std"] == 0.0
    assert summary[("nothing", "src")]["object_f1_mean"] == 0.0
    counts = [-len(np.unique(im.labels)) + 1 for im in images]
    assert summary[("nothing", "src")]["count_error_mean"] == pytest.approx(np.mean(counts))
    assert summary[("nothing", "src")]["n"] == 3


def test_summary_std_is_over_images() -> None:
    im = _disks_image(0)
    half = np.where(im.labels <= 2, im.labels, 0)  # two of four nuclei found
    rows = score([im], lambda rgb: im.labels, "m") + score([EvalImage("src", "b", im.rgb, im.labels)], lambda rgb: half, "m")
    s = summarise_sources(rows)[("m", "src")]
    vals = [1.0, aji(im.labels, half)]
    assert s["aji_mean"] == pytest.approx(np.mean(vals))
    assert s["aji_std"] == pytest.approx(np.std(vals, ddof=1))


def test_table_has_a_block_per_metric_and_marks_notes() -> None:
    rows = [
        {"method": "Baseline (no learning)", "source": "a", "image": "x", **{m: 0.5 for m, _ in LODO_METRICS}},
        {"method": "Model", "source": "b", "image": "y", **{m: 0.7 for m, _ in LODO_METRICS}},
    ]
    text = format_lodo_table(summarise_sources(rows), notes={("Model", "b"): "seen"})
    for _, title in LODO_METRICS:
        assert title in text
    assert "0.700 ± 0.000 (seen)" in text
    assert "—" in text  # the baseline was not scored on b, the model not on a
    assert text.count("Baseline (no learning)") == len(LODO_METRICS)


def test_lodo_models_picks_the_run_that_held_the_source_out(tmp_path) -> None:
    for d in ("cpm15", "all", "monuseg2018_train_xml"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "multiorgan.safetensors").write_bytes(b"")
    got = lodo_models(tmp_path, ["cpm15", "monuseg2018_train_xml", "monuseg2018_test"])
    assert got["cpm15"] == tmp_path / "cpm15" / "multiorgan.safetensors"
    assert got["monuseg2018_train_xml"].parent.name == "monuseg2018_train_xml"
    # the evaluation-only test set is scored with the union model: it was held out of every run
    assert got["monuseg2018_test"].parent.name == "all"
    with pytest.raises(FileNotFoundError, match="--hold-out tnbc"):
        lodo_models(tmp_path, ["tnbc"])


def test_lodo_models_uses_the_union_for_a_source_it_never_trained_on(tmp_path) -> None:
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "multiorgan.safetensors").write_bytes(b"")
    # No JSON: the union's sources are unknown, so it may have seen gbm40: refused.
    with pytest.raises(FileNotFoundError, match="--hold-out gbm40"):
        lodo_models(tmp_path, ["gbm40"])
    (tmp_path / "all" / "multiorgan.json").write_text(json.dumps({"training": {"sources": ["tnbc", "cpm15"]}}))
    assert trained_on(tmp_path / "all" / "multiorgan.safetensors") == ["tnbc", "cpm15"]
    got = lodo_models(tmp_path, ["gbm40"])
    assert got["gbm40"].parent.name == "all"
    # A source the union trained on still needs its own held-out run.
    with pytest.raises(FileNotFoundError, match="--hold-out cpm15"):
        lodo_models(tmp_path, ["cpm15"])


def test_cli_lodo_scores_each_source_with_its_held_out_model(tmp_path, capsys, torch_one_thread) -> None:  # noqa: ARG001
    # A tiny converted cache (one synthetic source) and a run folder whose cpm15 model is the
    # bundled weights: the multi-organ row must then equal the TNBC-only row, image by image.
    import json
    import shutil
    from importlib.resources import files

    from PIL import Image

    from nucseg.cli.eval import main
    from nucseg.wsi.demo import synthetic_he

    cache = tmp_path / "cache" / "cpm15"
    (cache / "images").mkdir(parents=True)
    (cache / "labels").mkdir()
    entries = []
    for i in range(2):
        rgb, labels, _ = synthetic_he((96, 96), seed=i, tissue_fraction=1.0)
        Image.fromarray(rgb).save(cache / "images" / f"im{i}.png")
        np.save(cache / "labels" / f"im{i}.npy", labels.astype(np.int32))
        entries.append({"name": f"im{i}", "image": f"images/im{i}.png", "labels": f"labels/im{i}.npy",
                        "mpp": 0.25, "organ": "synthetic", "patient": f"p{i}"})
    (cache / "manifest.json").write_text(json.dumps({"source": "cpm15", "images": entries}))
    run = tmp_path / "runs" / "cpm15"
    run.mkdir(parents=True)
    weights = files("nucseg") / "models" / "weights"
    shutil.copy(weights / "default.safetensors", run / "multiorgan.safetensors")
    shutil.copy(weights / "default.json", run / "multiorgan.json")

    out = tmp_path / "eval"
    code = main(["--lodo", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"), "--sources", "cpm15",
                 "--out", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Baseline (no learning)" in text and "TNBC-only (bundled)" in text and "Multi-organ (source held out)" in text
    doc = json.loads((out / "lodo.json").read_text())
    by_method = {r["method"]: r for r in doc["summary"]}
    assert set(by_method) == {"Baseline (no learning)", "TNBC-only (bundled)", "Multi-organ (source held out)",
                              MULTIORGAN_ROW, ENSEMBLE_ROW}
    assert by_method["Multi-organ (source held out)"]["aji_mean"] == by_method["TNBC-only (bundled)"]["aji_mean"]
    assert all(r["n"] == 2 for r in doc["summary"])
    assert f"{MULTIORGAN_ROW} " in text and "(seen)" not in text  # cpm15: never trained on by either bundled model


def test_lodo_marks_the_sources_the_bundled_multiorgan_model_trained_on(tmp_path, torch_one_thread) -> None:  # noqa: ARG001
    from PIL import Image

    from nucseg.generalization import run_protocol
    from nucseg.wsi.demo import synthetic_he

    for source in ("monuseg2018_train", "gbm40"):
        cache = tmp_path / "cache" / source
        (cache / "images").mkdir(parents=True)
        (cache / "labels").mkdir()
        rgb, labels, _ = synthetic_he((96, 96), seed=1, tissue_fraction=1.0)
        Image.fromarray(rgb).save(cache / "images" / "im.png")
        np.save(cache / "labels" / "im.npy", labels.astype(np.int32))
        entry = {"name": "im", "image": "images/im.png", "labels": "labels/im.npy", "mpp": 0.25, "organ": "x", "patient": "p"}
        (cache / "manifest.json").write_text(json.dumps({"source": source, "images": [entry]}))
    rows, notes = run_protocol(None, tmp_path / "cache", None, ("monuseg2018_train", "gbm40"), baseline=False)
    # Both models that trained on MoNuSeg train say so; neither saw GBM40.
    assert notes == {(MULTIORGAN_ROW, "monuseg2018_train"): "seen", (ENSEMBLE_ROW, "monuseg2018_train"): "seen"}
    assert {r["method"] for r in rows} == {"TNBC-only (bundled)", MULTIORGAN_ROW, ENSEMBLE_ROW}
    table = format_lodo_table(summarise_sources(rows), notes)
    for row in (MULTIORGAN_ROW, ENSEMBLE_ROW):
        line = next(x for x in table.splitlines() if x.startswith(row))
        assert line.count("(seen)") == 1


def test_cli_lodo_needs_the_cache(capsys) -> None:
    from nucseg.cli.eval import main

    assert main(["--lodo", "runs", "--quiet"]) == 2
    assert "--cache" in capsys.readouterr().err


def _red_channel_model(mpp: float, min_area: int, seen: list):
    # A stand-in model whose "network" is the image's red channel.
    from nucseg import PostprocessRecipe

    class Config:
        recipe = PostprocessRecipe(lam=0.1, threshold=0.5, min_area=min_area)

    Config.mpp = mpp

    class Model:
        config = Config()

        def predict(self, rgb):
            seen.append(rgb.shape)
            return rgb[..., 0].astype(np.float32) / 255

    return Model()


def _two_squares() -> np.ndarray:
    rgb = np.zeros((64, 66, 3), np.uint8)
    rgb[8:24, 8:24] = 255   # 256 px: 64 px at half size
    rgb[40:44, 40:44] = 255  # 16 px: 4 px at half size
    return rgb


def test_segment_at_a_coarser_resolution_shrinks_the_image_and_min_area() -> None:
    # A 0.25 um/px model run at 0.5 um/px: the labels come from the half-size image (the model
    # saw 1/4 of the pixels), at the image's own shape; min_area 40 keeps its um^2 (10 px there).
    from nucseg.generalization import segment_at

    seen: list = []
    labels = segment_at(_red_channel_model(0.25, 40, seen), 0.25, 0.5)(_two_squares())
    assert seen == [(32, 33, 3)]
    assert labels.shape == (64, 66) and labels.dtype == np.int32
    assert labels.max() == 1
    assert labels[12, 12] == 1 and labels[41, 41] == 0  # 4 px < 10: dropped
    # the kept square comes back at about its full-resolution area
    assert abs(int((labels == 1).sum()) - 256) <= 64


def test_segment_at_runs_a_model_at_its_own_resolution() -> None:
    # A model trained at 0.5 um/px scored on 0.25 um/px images: it sees the half-size image and
    # its min_area (in its own pixels, 10) is not scaled again, so the same squares come out as
    # for the 0.25 um/px model run coarser; on images at its own resolution nothing is resampled.
    from nucseg.generalization import segment_at

    seen: list = []
    model = _red_channel_model(0.5, 10, seen)
    labels = segment_at(model, 0.25)(_two_squares())
    assert seen == [(32, 33, 3)]
    assert labels.shape == (64, 66) and labels.max() == 1 and labels[41, 41] == 0
    seen.clear()
    same = segment_at(model, 0.5)(_two_squares())
    assert seen == [(64, 66, 3)]
    assert same.max() == 2 and same[41, 41] > 0  # 16 px >= 10 px at its own resolution: kept


def test_eval_help_names_the_protocol_sources():
    # The CLI's help is a literal (the module imports lazily): it must not drift from the protocol.
    from nucseg.cli.eval import build_parser
    from nucseg.generalization import PROTOCOL_SOURCES

    action = next(a for a in build_parser()._actions if "--sources" in a.option_strings)
    assert f"(default: {', '.join(PROTOCOL_SOURCES)})" in action.help
