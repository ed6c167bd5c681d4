"""Per variant: tile latency against Keras and agreement with Keras; the CPU features found.

One batch-1 tile, the same weights in every format (XNNPACK, 2 threads), timed in one run; then
which variant ``--runtime litert`` would choose here (:mod:`unet_tf.variants`) and why.

    python benchmarks/bench_export.py           # the paper net (depth 5, 64 filters, 572 tile)
    python benchmarks/bench_export.py --quick   # the demo's net (depth 4, 16 filters, 188 tile)
    python benchmarks/bench_export.py --model MODEL_DIR --test DIR
        # a trained folder: its exports' agreement with Keras on held-out images, whole images
        # tiled as `predict` tiles them: the labels' foreground IoU, instance F1 and same-argmax
        # pixels (DIR/images, or DIR itself; calibration on the folder's training images)

Without ``--model`` the nets have random weights: the latencies are real, the agreement is not
a yardstick (it is printed for the bundled sample's tiles only as a sanity check).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from _timing import best_time, report
from unet_tf import build_unet, overlap_tile
from unet_tf.backend import keras
from unet_tf.exporters.tflite import (agreement, calibration_images_for, calibration_tiles,
                                      convert, device_tile_size, fixed_size_model, int8_model)
from unet_tf.images import crop_reflect, normalize
from unet_tf.instances import label_image
from unet_tf.io import list_images, read_frames
from unet_tf.metrics import evaluate, foreground_iou
from unet_tf.model_folder import load_model_folder
from unet_tf.samples import load_sample
from unet_tf.sizes import output_size, size_rule
from unet_tf.variants import VARIANTS, choose_variant, cpu_flags, int8_dot_product

SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
               "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def interpreter(model_bytes):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=model_bytes, num_threads=2)
    it.allocate_tensors()
    return it


def tile_call(model_bytes, tile):
    it = interpreter(model_bytes)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    x = overlap_tile.quantize(tile, inp)

    def call():
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(out["index"])
    return call


def random_net(quick):
    depth, filters, tile = (4, 16, 188) if quick else (5, 64, 572)
    keras.utils.set_random_seed(0)
    model = build_unet((tile, tile, 1), depth=depth, filters=filters, dropout=0.0)
    image = normalize(load_sample()[0])
    tiles = np.stack([crop_reflect(image, top, left, tile, tile)[None, ..., None]
                      for top in (0, 200) for left in (0, 200)]).astype(np.float32)
    return model, None, tiles, tile


def trained_net(folder):
    model, config = load_model_folder(folder)
    tile = device_tile_size(config)[0]
    tiles = calibration_tiles(calibration_images_for(config, None), config, tile)
    return fixed_size_model(model, config, tile), config, tiles, tile


def whole_image_agreement(model, config, tile, variants, test_dir):
    """Labels of each held-out image by Keras and by each export, tiled alike."""
    a = config.architecture
    out, period = output_size(tile, a.depth, a.upsampling), size_rule(a.depth, a.upsampling)[1]
    folder = Path(test_dir) / "images" if (Path(test_dir) / "images").is_dir() else test_dir
    images = [f for p in list_images(folder, "test") for f in read_frames(p)]
    settings = config.postprocessing_settings

    def run(predict_tiles):
        logits = [overlap_tile.predict_image(overlap_tile.as_yxc_with(im, a.channels),
                                             predict_tiles, tile, out, period,
                                             config.normalization) for im in images]
        return logits, [label_image(overlap_tile.softmax(lg), settings) for lg in logits]

    ref_logits, ref_labels = run(lambda t: model(t, training=False).numpy())
    print(f"\nagreement with Keras on {len(images)} held-out image(s) from {folder}, "
          f"tile {tile} (labels: the folder's post-processing)")
    for kind, model_bytes in variants.items():
        it = interpreter(model_bytes)
        logits, labels = run(lambda t: overlap_tile.invoke_tiles(it, t))
        ious = [foreground_iou(r, lb) for r, lb in zip(ref_labels, labels)]
        f1 = [evaluate(r, lb)["f1"] for r, lb in zip(ref_labels, labels)]
        same = np.mean([np.mean(lg.argmax(-1) == r.argmax(-1))
                        for lg, r in zip(logits, ref_logits)])
        print(f"  {kind:8s} foreground IoU mean {np.mean(ious):.4f} (min {min(ious):.4f}), "
              f"instance F1 {np.mean(f1):.4f}, same argmax {100 * same:.3f} %")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the demo's small net")
    parser.add_argument("--model", help="a trained model folder (instead of a random net)")
    parser.add_argument("--test", help="with --model: held-out images (DIR or DIR/images)")
    args = parser.parse_args()
    if args.test and not args.model:
        parser.error("--test needs --model")
    flags = cpu_flags()
    found = int8_dot_product(flags)
    print(f"CPU flags: {' '.join(f for f in SHOWN_FLAGS if f in flags) or 'none of interest'}"
          f" -> int8 dot products: {found or 'none'}")
    model, config, tiles, tile = trained_net(args.model) if args.model else random_net(args.quick)
    sample = tiles[0]
    variants = {kind: convert(model, kind) for kind in VARIANTS if kind != "int8"}
    variants["int8"], calibration = int8_model(model, tiles)
    print(f"int8 calibration ({calibration['tiles']} tiles): clip at percent "
          f"{calibration['clip_percent']} chosen; object-label agreement with Keras on the "
          f"tiles: {calibration['object_label_agreement']}")
    calls = {"keras": lambda: model(sample, training=False).numpy()}
    calls.update({kind: tile_call(b, sample) for kind, b in variants.items()})
    times = {}
    for name, call in calls.items():
        call()  # warm up
        times[name] = best_time(call, 5 if tile < 400 else 3)

    print(f"{model.count_params():,} parameters, tile {tile} -> one batch-1 tile, 2 threads")
    for name, seconds in times.items():
        line = f"  {name:8s} {seconds * 1000:9.1f} ms  {times['keras'] / seconds:5.2f}x Keras"
        if name in variants:
            check = agreement(model, variants[name], tiles)
            line += (f", {len(variants[name]) / 1e6:6.2f} MB, max |logit diff| "
                     f"{check['max_abs_logit_diff']:.3g}, same argmax "
                     f"{100 * check['label_agreement']:.3f} % ({check['tiles']} tiles)")
        print(line)
    report("tflite float32 vs keras", "keras", times["keras"], times["float32"])
    report("tflite fp16 vs float32", "tflite float32", times["float32"], times["fp16"])
    report("tflite int8 vs float32", "tflite float32", times["float32"], times["int8"])
    fastest = "int8" if times["int8"] < times["float32"] else "float32"  # fp16 computes as float32
    chosen, why = choose_variant(VARIANTS, flags)
    print(f"--runtime litert chooses {chosen} here ({why}); fastest measured: {fastest}"
          f"{'' if chosen == fastest else '  <- the rule and this measurement disagree'}")
    if args.test:
        whole_image_agreement(model, config, tile, variants, args.test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
