"""Would int8 static quantisation of the ONNX model pay? Parity with torch float32 and speed.

Quantises the exported bundled model (onnxruntime.quantization, QDQ, per-channel int8
weights, uint8 activations on Conv/ConvTranspose/MaxPool/Concat), calibrated on 256 px
crops of every fourth TNBC training image, then compares on all TNBC images: largest
|delta prob| and pooled object F1 of the labels against torch float32, and the time of
one 1024x1024 tile on one thread (fastest of 3, and CPU seconds).

    NUCSEG_DATA=/path/to/shared/data python scripts/onnx_int8_parity.py [MinMax|Percentile|Entropy]

Measured on a 2-core x86-64 CPU (AVX512-VNNI, AMX), onnxruntime 1.32, under load:
MinMax F1 0.9938 (max |dprob| 0.12: below the 0.995 bar), Percentile F1 0.9962 (tp 3633,
fp 11, fn 17; max |dprob| 0.15); int8 only about 5 % faster than float32 (0.72 vs 0.76 CPU s,
1.39 vs 1.46 s per tile). Not worth a second model: the backend stays float32.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _images(data: Path) -> list[Path]:
    return sorted(data.glob("tnbc/Slide_*/*.png"))


def _calibration(paths: list[Path]) -> list[dict[str, np.ndarray]]:
    from nucseg.data import read_rgb

    crops = []
    for p in paths[::4]:
        rgb = read_rgb(p)
        crops += [{"rgb": np.ascontiguousarray(rgb[None, :256, :256])}]
        crops += [{"rgb": np.ascontiguousarray(rgb[None, 256:, 256:])}]
    return crops


def _quantise(src: Path, dst: Path, crops: list[dict[str, np.ndarray]], method: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(crops)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        op_types_to_quantize=["Conv", "ConvTranspose", "MaxPool", "Concat"],
    )


def _time(net, rgb: np.ndarray) -> tuple[float, float]:
    net.predict(rgb)
    walls, cpus = [], []
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        net.predict(rgb)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), float(np.median(cpus))


def main(method: str = "MinMax") -> None:
    import onnxruntime as ort
    import torch

    import nucseg
    from nucseg import backends
    from nucseg.data import read_rgb
    from nucseg.metrics import object_scores

    torch.set_num_threads(1)
    data = Path(os.environ.get("NUCSEG_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    paths = _images(data)
    if not paths:
        sys.exit(f"no TNBC images under {data} (set NUCSEG_DATA)")
    ref = nucseg.load_model(device="cpu")
    fp32 = nucseg.load_model(device="cpu", backend="onnx", threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        q8_path = Path(tmp) / "int8.onnx"
        _quantise(fp32._engine.path, q8_path, _calibration(paths), method)
        # The float32 model with the int8 session as its engine: NucleusModel.predict's one
        # loop (padding, batching, TTA) around OnnxNetwork.run.
        engine = backends.OnnxNetwork.__new__(backends.OnnxNetwork)
        engine.config, engine.threads, engine.path = fp32.config, 1, q8_path
        engine.session = ort.InferenceSession(
            str(q8_path), backends._session_options(ort, 1, False), providers=["CPUExecutionProvider"]
        )
        int8 = copy.copy(fp32)
        int8._engine = engine
        dmax, counts = 0.0, np.zeros(3)
        for p in paths:
            rgb = read_rgb(p)
            a, b = ref.predict(rgb), int8.predict(rgb)
            dmax = max(dmax, float(np.abs(a - b).max()))
            s = object_scores(ref.postprocess(a), ref.postprocess(b))
            counts += (s.tp, s.fp, s.fn)
        tp, fp, fn = counts
        print(f"{method}: {len(paths)} TNBC images, max |dprob| {dmax:.4f}, pooled object F1 "
              f"{2 * tp / (2 * tp + fp + fn):.4f} (tp {tp:.0f}, fp {fp:.0f}, fn {fn:.0f}) against torch float32")
        rgb = np.random.default_rng(0).integers(0, 256, (1, 1024, 1024, 3), dtype=np.uint8)
        for name, net in (("float32", fp32), ("int8", int8)):
            wall, cpu = _time(net, rgb)
            print(f"{name}: 1024x1024 on 1 thread, fastest {wall:.3f} s, {cpu:.3f} CPU s")


if __name__ == "__main__":
    main(*sys.argv[1:2])
