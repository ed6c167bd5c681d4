"""Inference throughput of predict_tiled (output Mpx/s): paper net and edge preset, Keras vs
TFLite float32 and int8 (the edge runtime's tiling), and a batch-size sweep for Keras.

    python benchmarks/bench_inference.py            # 1024^2 image, batch 1/2/4/8
    python benchmarks/bench_inference.py --quick    # 512^2 image, batch 1/4
"""

import argparse
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

from _timing import best_time, report
from unet_tf import build_unet
from unet_tf.exporters.tflite import calibration_tiles, convert as convert_to_tflite
from unet_tf.samples import load_sample
from unet_tf.images import NORMALIZATION
from unet_tf.config import PRESETS
from unet_tf.sizes import output_size, size_rule
from unet_tf.tiling import predict_tiled

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "export"))
from edge_predict import EdgeModel  # noqa: E402


def tflite_model(model, preset, kind, image, folder):
    """An EdgeModel for ``model`` exported as ``kind``, with the sidecar the runtime reads."""
    import hashlib
    import json
    p = PRESETS[preset]
    config = {"architecture": {"depth": p["depth"], "upsampling": p["upsampling"],
                               "num_classes": 2, "channels": 1},
              "normalization": NORMALIZATION}
    tiles = calibration_tiles([image], config, p["tile_size"], 16) if kind == "int8" else None
    data = convert_to_tflite(model, kind, tiles)
    path = Path(folder) / f"{preset}_{kind}.tflite"
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps({
        "format": "unet-tf tflite", "tflite_sha256": hashlib.sha256(data).hexdigest(),
        "tile_size": p["tile_size"], "pooling_period": size_rule(p["depth"], p["upsampling"])[1],
        "output_size": output_size(p["tile_size"], p["depth"], p["upsampling"]),
        "channels": 1, "num_classes": 2, "normalization": NORMALIZATION}))
    return EdgeModel(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller image, fewer batches")
    quick = parser.parse_args().quick
    size = 512 if quick else 1024
    image = np.tile(load_sample()[0], (size // 512, size // 512))
    megapixels = size * size / 1e6
    with tempfile.TemporaryDirectory() as folder:
        for preset in ("paper", "edge"):
            p = PRESETS[preset]
            keras.utils.set_random_seed(0)
            fixed = build_unet((p["tile_size"], p["tile_size"], 1), depth=p["depth"],
                               filters=p["filters"], upsampling=p["upsampling"], dropout=0.0)
            dynamic = build_unet(depth=p["depth"], filters=p["filters"],
                                 upsampling=p["upsampling"], dropout=0.0)
            dynamic.set_weights(fixed.get_weights())
            rates = {}
            for batch in ((1, 4) if quick else (1, 2, 4, 8)):
                run = lambda: predict_tiled(dynamic, image, tile_size=p["tile_size"],
                                            batch_size=batch)
                run()
                rates[f"keras batch {batch}"] = megapixels / best_time(run, 2)
            for kind in ("float32", "int8"):
                edge = tflite_model(fixed, preset, kind, image, folder)
                run = lambda: edge.predict(image)
                run()
                rates[f"tflite {kind}"] = megapixels / best_time(run, 2)
            print(f"{preset} ({p['depth']} levels, {p['filters']} filters, tile {p['tile_size']}),"
                  f" {size}^2 image, output Mpx/s:")
            for name, rate in rates.items():
                print(f"  {name:16s} {rate:8.3f}")
            best_keras = max(v for k, v in rates.items() if k.startswith("keras"))
            report(f"{preset}: tflite int8 vs best keras (s per output Mpx)", "keras", 1 / best_keras,
                   1 / rates["tflite int8"], unit="s")


if __name__ == "__main__":
    main()
