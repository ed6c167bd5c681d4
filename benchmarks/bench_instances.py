"""Objects that match the cells: held-out instance accuracy per mode, at equal training time.

    python benchmarks/bench_instances.py [--hela DIR] [--budget 10m] [--skip-sample]

Modes, each trained by the planner within the same budget on 2 CPU cores:
- ``2-class``: the paper's target (background/foreground + weight map); objects are the
  connected components of the foreground (what unet-tf gave before post-processing);
- ``2-class + post``: the same model with the post-processing tuned on its validation images
  (threshold, watershed split, smallest object, hole filling);
- ``3-class``: background / interior / boundary, objects grown from the interiors, tuned alike.

Data as in ``bench_time_to_accuracy.py`` (the bundled sample's right quarter; Fluo-HeLa frames
15-19 after training on 0-11). Prints foreground IoU, F1@0.5, mean AP over IoU 0.5:0.95 (the
DSB2018 score), merged, split, missed and false-positive objects (sums over the test images),
and ``RESULT`` lines: F1 of each mode over the plain 2-class F1.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import unet_tf
from bench_time_to_accuracy import hela_set, sample_set
from unet_tf.planner import make_plan
from unet_tf.postprocess import describe

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hela", help="folder holding the Fluo_Hela_02 files (see "
                        "bench_time_to_accuracy.py)")
    parser.add_argument("--budget", default="10m", help="training time per mode (10m)")
    parser.add_argument("--skip-sample", action="store_true", help="only the Fluo-HeLa set")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_sample:
            benchmark("sample", sample_set(), args.budget, Path(tmp))
        if args.hela:
            benchmark("hela", hela_set(args.hela), args.budget, Path(tmp))


if __name__ == "__main__":
    main()
