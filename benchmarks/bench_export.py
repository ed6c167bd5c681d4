"""Per-tile latency of the exports: Keras vs TFLite float32, fp16 and int8 (XNNPACK, 2 threads).

One batch-1 tile, the same weights in every format, timed in one run. Goal: int8 >= 2x faster
than float TFLite. Also prints each model's size.

    python benchmarks/bench_export.py           # the paper net (depth 5, 64 filters, 572 tile)
    python benchmarks/bench_export.py --quick   # the demo's net (depth 4, 16 filters, 188 tile)
"""

import argparse

import keras
import numpy as np

from _timing import best_time, report
from unet_tf import build_unet
from unet_tf.exporters.tflite import convert as convert_to_tflite
from unet_tf.samples import load_sample
from unet_tf.images import crop_reflect, normalize


def interpreter_call(model_bytes, tile):
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=model_bytes, num_threads=2)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = tile
    if inp["dtype"] == np.int8:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(tile / scale) + zero, -128, 127).astype(np.int8)

    def call():
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])
    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the demo's small net")
    quick = parser.parse_args().quick
    depth, filters, tile = (4, 16, 188) if quick else (5, 64, 572)
    repeat = 5 if quick else 3
    keras.utils.set_random_seed(0)
    model = build_unet((tile, tile, 1), depth=depth, filters=filters, dropout=0.0)
    image = normalize(load_sample()[0])
    tiles = np.stack([crop_reflect(image, top, left, tile, tile)[None, ..., None]
                      for top in (0, 200) for left in (0, 200)]).astype(np.float32)
    sample = tiles[0]

    calls = {"keras": lambda: model(sample, training=False).numpy()}
    sizes = {}
    for kind in ("float32", "fp16", "int8"):
        model_bytes = convert_to_tflite(model, kind, tiles if kind == "int8" else None)
        sizes[kind] = len(model_bytes) / 1e6
        calls[kind] = interpreter_call(model_bytes, sample)
    times = {}
    for name, call in calls.items():
        call()  # warm up
        times[name] = best_time(call, repeat)

    print(f"depth {depth}, {filters} filters, tile {tile} -> one batch-1 tile, 2 threads")
    for name, seconds in times.items():
        size = f", {sizes[name]:.2f} MB" if name in sizes else ""
        print(f"  {name:8s} {seconds * 1000:9.1f} ms{size}")
    report("tflite float32 vs keras", "keras", times["keras"], times["float32"])
    report("tflite fp16 vs float32", "tflite float32", times["float32"], times["fp16"])
    report("tflite int8 vs float32 (goal >= 2x)", "tflite float32", times["float32"], times["int8"])


if __name__ == "__main__":
    main()
