"""From network output to what a person uses: instance labels (with settings tuned on
validation images), files, overlays."""

from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from .images import as_yxc, normalize
from .instances import DEFAULT_SETTINGS, label_image
from .metrics import match_instances, without_ignored
from .masks import as_instances, split_ignored

PROBABILITY_CUTOFFS = (0.3, 0.4, 0.5, 0.6, 0.7)
SPLITS = (None, 0.5, 1, 2, 3, 5, 8)              # h of the h-maxima seeds, pixels
MIN_SIZE_FRACTIONS = (0, 0.1, 0.25, 0.5, 0.75)   # of the 5th percentile of true object areas
# Volumes: fewer candidates (a 3-D split takes seconds, not milliseconds).
VOLUME_GRID = {"thresholds": (0.4, 0.5, 0.6), "splits": (None, 1, 2, 4)}


def describe(settings, unit="px"):
    """The post-processing settings in a few words, for logs (``unit``: of sizes; a volume's
    are ``"voxels"``, its split ``h`` in in-plane pixels)."""
    if settings.get("target") == "classes":
        return "class ids"
    split = ("split on predicted boundaries" if settings["target"] == "boundary" else
             f"split at h {settings['split']:g} px" if settings["split"] else "no split")
    return (f"threshold {settings['threshold']:g}, {split}, objects >= {settings['min_size']} "
            f"{unit}, holes <= {settings['max_hole']} {unit} filled")


def _pooled_scores(predictions, masks, ignored):
    """F1 at IoU 0.5 of all images' objects together, and the mean DSB2018 AP (a tie-break);
    predicted objects lying mostly on unannotated pixels (``ignored``) are not scored."""
    tp = true = predicted = 0
    aps = []
    for prediction, mask, unannotated in zip(predictions, masks, ignored):
        m = match_instances(*without_ignored(mask, prediction, unannotated))
        tp += m["per_threshold"][0.5]["tp"]
        true, predicted = true + m["true"], predicted + m["predicted"]
        aps.append(m["mean_ap"])
    return (2 * tp / (true + predicted) if true + predicted else 1.0), float(np.mean(aps))


def tune(probabilities, masks, target="foreground", ignore_label=None, labeller=label_image,
         grid=None):
    """Post-processing settings that maximise F1@0.5 of the objects of ``masks`` (instance
    labels) in the predicted ``probabilities`` (``(H, W, K)`` per image), with the mean AP as a
    tie-break: the threshold and the split first, then the smallest object kept. Mask pixels
    equal to ``ignore_label`` are unannotated and not scored.

    Holes up to the median true object area are filled. Returns ``(settings, report)``; the
    report holds F1@0.5 before (the defaults: threshold 0.5, no split, nothing dropped) and
    after, and ``foreground_ratio``: the predicted foreground pixels (tuned, on annotated
    pixels) over the true ones.

    ``labeller(probabilities, settings)`` makes the labels: :func:`unet_tf.instances.label_image`
    for ``(H, W, K)`` images; for ``(Z, Y, X, K)`` volumes, ``ZYX`` masks, one that labels in 3-D
    (:func:`unet_tf.volume_instances.label_volume` with the voxel size). ``grid``: other
    candidate ``thresholds`` and ``splits`` (e.g. :data:`VOLUME_GRID`).
    """
    grid = {"thresholds": PROBABILITY_CUTOFFS, "splits": SPLITS, **(grid or {})}
    ndim = np.ndim(masks[0]) if len(masks) else 2
    split = [split_ignored(m, ignore_label, f"mask {i}", ndim) for i, m in enumerate(masks)]
    ignored = [unannotated for _, unannotated in split]
    masks = [as_instances(m, f"mask {i}", ndim) for i, (m, _) in enumerate(split)]
    areas = np.concatenate([np.bincount(m.ravel())[1:] for m in masks])
    areas = areas[areas > 0]
    if not areas.size:
        raise ValueError("the masks to tune post-processing on hold no objects")
    base = {**DEFAULT_SETTINGS, "target": target, "max_hole": int(np.median(areas))}

    def score(settings):
        return _pooled_scores([labeller(p, settings) for p in probabilities], masks, ignored)

    def best_of(candidates):  # (settings, scores) of the best, each candidate scored once
        return max(((c, score(c)) for c in candidates), key=lambda scored: scored[1])

    splits = grid["splits"] if target == "foreground" else (None,)
    best, _ = best_of([{**base, "threshold": t, "split": h}
                       for t in grid["thresholds"] for h in splits])
    small = np.percentile(areas, 5)
    best, scores = best_of([{**best, "min_size": int(f * small)} for f in MIN_SIZE_FRACTIONS])
    predicted = sum(np.count_nonzero(without_ignored(m, labeller(p, best), i)[1])
                    for p, m, i in zip(probabilities, masks, ignored))
    report = {"f1_before": score({**DEFAULT_SETTINGS, "target": target})[0],
              "f1_after": scores[0],
              "foreground_ratio": round(predicted / sum(np.count_nonzero(m) for m in masks), 4)}
    return best, report


def overlay(image, labels, color=(255, 64, 0)):
    """RGB uint8 picture of ``image`` (gray, percentile-stretched) with label outlines drawn."""
    gray = as_yxc(image)
    gray = gray.mean(-1) if gray.shape[2] != 1 else gray[..., 0]
    gray = (np.clip(normalize(gray), 0, 1) * 255).astype(np.uint8)
    picture = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    labels = np.asarray(labels)
    # Outlines where a pixel's label differs from a neighbour's: touching instances stay apart.
    edges = (labels > 0) & ((ndi.grey_erosion(labels, size=3) != labels)
                            | (ndi.grey_dilation(labels, size=3) != labels))
    picture[edges] = color
    return picture


def prediction_paths(labels_path, with_probabilities=False):
    """The files ``predict`` writes for one input: labels, ``NAME_overlay.png`` and, on
    request, ``NAME_probabilities.tif``."""
    labels_path = Path(labels_path)
    paths = [labels_path, labels_path.with_name(f"{labels_path.stem}_overlay.png")]
    return paths + ([labels_path.with_name(f"{labels_path.stem}_probabilities.tif")]
                    if with_probabilities else [])


def write_prediction(labels_path, frames, labels, probabilities=None, overwrite=False):
    """Write one input's results: its labels (a stack for several frames), the overlay of its
    first frame and, if given, the probabilities; each file atomically."""
    from .io import write_image
    stack = lambda arrays: arrays[0] if len(arrays) == 1 else np.stack(arrays)
    paths = prediction_paths(labels_path, probabilities is not None)
    write_image(paths[0], stack(labels), overwrite=overwrite)
    write_image(paths[1], overlay(frames[0], labels[0]), overwrite=overwrite)
    if probabilities is not None:
        write_image(paths[2], stack(probabilities), overwrite=overwrite)


def write_volume_prediction(labels_path, volume, labels, probabilities=None, overwrite=False):
    """Write a volume's results: its ``ZYX`` labels, the overlay of its middle slice and, if
    given, the ``ZYXK`` probabilities; each file atomically."""
    from .io import write_image
    paths = prediction_paths(labels_path, probabilities is not None)
    middle = labels.shape[0] // 2
    write_image(paths[0], labels, overwrite=overwrite)
    write_image(paths[1], overlay(volume[middle], labels[middle]), overwrite=overwrite)
    if probabilities is not None:
        write_image(paths[2], probabilities, overwrite=overwrite)
