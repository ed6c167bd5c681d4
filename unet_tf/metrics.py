"""Segmentation metrics on numpy label images (``YX``, or ``ZYX`` volumes with 3-D objects).

Semantic: IoU per class and of the foreground, pixel error. Segment-level: the ISBI 2012 Rand
error on connected components of the foreground, and instance matching at IoU thresholds
(precision, recall, F1, the DSB2018 average precision, merged and split cells). Masks from a
two-class U-Net are turned into instances by connected components
(:func:`unet_tf.masks.as_instances`).
"""

import numpy as np
from scipy import ndimage as ndi

from .masks import as_instances

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def _spatial_ndim(labels):
    """3 for a ZYX volume (objects are 3-D: one label across slices), else 2 (YX)."""
    return 3 if np.ndim(labels) == 3 else 2


def _pair(truth, prediction):
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth has shape {truth.shape} but prediction has {prediction.shape}")
    return truth, prediction


def class_iou(truth, prediction, num_classes=2):
    """IoU of every class id ``0..num_classes-1`` (NaN for a class absent from both)."""
    truth, prediction = _pair(truth, prediction)
    ious = []
    for k in range(num_classes):
        t, p = truth == k, prediction == k
        union = np.logical_or(t, p).sum()
        ious.append(np.logical_and(t, p).sum() / union if union else np.nan)
    return np.array(ious)


def foreground_iou(truth, prediction):
    """IoU of the foreground (any non-zero label); 1.0 when both are empty."""
    truth, prediction = _pair(truth, prediction)
    t, p = truth > 0, prediction > 0
    union = np.logical_or(t, p).sum()
    return float(np.logical_and(t, p).sum() / union) if union else 1.0


def pixel_error(truth, prediction, where=None):
    """Fraction of pixels (of those ``where`` is true, default all) whose
    foreground/background assignment differs."""
    truth, prediction = _pair(truth, prediction)
    differs = (truth > 0) != (prediction > 0)
    return float(np.mean(differs if where is None else differs[where])) if differs.size else 0.0


def without_ignored(truth, prediction, ignored):
    """``(truth, prediction)`` scored on annotated pixels only (``ignored``: a boolean ``YX``
    array of unannotated pixels, or ``None``): predicted objects lying mostly on unannotated
    pixels are dropped (nobody said whether they are cells), and both images are 0 there."""
    truth, prediction = _pair(truth, prediction)
    if ignored is None or not ignored.any():
        return truth, prediction
    prediction = _relabel(as_instances(prediction, "prediction", _spatial_ndim(prediction)))
    inside = np.bincount(prediction[ignored].ravel(), minlength=prediction.max() + 1)
    unannotated = inside > np.bincount(prediction.ravel()) / 2.0
    unannotated[0] = True
    return np.where(ignored, 0, truth), np.where(unannotated[prediction], 0, prediction)


def _contingency(a, b):
    """Overlap counts ``n[i, j]`` between the labels of two instance images."""
    a, b = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    rows, columns = int(a.max()) + 1, int(b.max()) + 1
    return np.bincount(a * columns + b, minlength=rows * columns).reshape(rows, columns)


def rand_error(truth, prediction):
    """1 - Rand index between the segmentations given by connected components of the foreground
    (the background is one more segment), as in the ISBI 2012 EM challenge."""
    truth, prediction = _pair(truth, prediction)
    table = _contingency(ndi.label(truth > 0)[0], ndi.label(prediction > 0)[0])
    pairs = lambda n: (n * (n - 1) / 2.0).sum()
    n = table.sum()
    total = n * (n - 1) / 2.0
    if total == 0:
        return 0.0
    agree = total + 2 * pairs(table) - pairs(table.sum(1)) - pairs(table.sum(0))
    return float(1.0 - agree / total)


def _iou_matrix(truth, prediction):
    table = _contingency(truth, prediction)[1:, 1:]  # drop the background row/column
    sizes_true, sizes_pred = np.bincount(truth.ravel())[1:], np.bincount(prediction.ravel())[1:]
    union = sizes_true[:, None] + sizes_pred[None, :] - table
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, table / union, 0.0), table, sizes_true, sizes_pred


def match_instances(truth, prediction, thresholds=IOU_THRESHOLDS):
    """Match true and predicted instances one-to-one where their IoU is above a threshold.

    "Above" is strict (DSB2018: a hit has IoU greater than t), so at 0.5 matches are unique.

    Returns a dict: ``true``/``predicted`` counts, per-threshold ``tp``/``fp``/``fn``,
    ``precision``/``recall``/``f1``/``ap`` (``tp / (tp + fp + fn)``, DSB2018), their values at
    0.5 as ``precision``/``recall``/``f1``/``ap50``, ``mean_ap`` over 0.5:0.95, ``merged``
    (predicted instances holding the majority of the pixels of two or more true ones) and
    ``split`` (true instances holding the majority of two or more predicted ones).
    """
    truth, prediction = _pair(truth, prediction)
    truth = _relabel(as_instances(truth, "truth", _spatial_ndim(truth)))
    prediction = _relabel(as_instances(prediction, "prediction", _spatial_ndim(prediction)))
    iou, table, sizes_true, sizes_pred = _iou_matrix(truth, prediction)
    n_true, n_pred = len(sizes_true), len(sizes_pred)
    # Greedy by IoU, one-to-one: exact for thresholds >= 0.5, where matches are unique anyway.
    order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None), iou.shape))[0] if iou.size else []
    per_threshold = {}
    for threshold in thresholds:
        used_true, used_pred, tp = set(), set(), 0
        for i, j in order:
            if iou[i, j] <= threshold:
                break
            if i not in used_true and j not in used_pred:
                used_true.add(i)
                used_pred.add(j)
                tp += 1
        fp, fn = n_pred - tp, n_true - tp
        per_threshold[float(threshold)] = {
            "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / n_pred if n_pred else float(n_true == 0),
            "recall": tp / n_true if n_true else float(n_pred == 0),
            "f1": 2 * tp / (n_true + n_pred) if n_true + n_pred else 1.0,
            "ap": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
        }
    true_mostly_in = table > sizes_true[:, None] / 2.0  # [i, j]: true i lies mostly in pred j
    pred_mostly_in = table > sizes_pred[None, :] / 2.0  # [i, j]: pred j lies mostly in true i
    at50 = per_threshold.get(0.5, next(iter(per_threshold.values())))
    return {
        "true": n_true, "predicted": n_pred,
        "precision": at50["precision"], "recall": at50["recall"], "f1": at50["f1"],
        "ap50": at50["ap"],
        "mean_ap": float(np.mean([m["ap"] for m in per_threshold.values()])),
        "merged": int((true_mostly_in.sum(0) >= 2).sum()),
        "split": int((pred_mostly_in.sum(1) >= 2).sum()),
        "per_threshold": per_threshold,
    }


def merges_and_splits(truth, prediction):
    """Where the cells went wrong, as a label image: ``1`` on predicted objects that merge two
    or more true ones, ``2`` on true objects split among two or more predicted ones (the
    ``merged``/``split`` counts of :func:`match_instances`), ``0`` elsewhere."""
    truth, prediction = _pair(truth, prediction)
    truth = _relabel(as_instances(truth, "truth", _spatial_ndim(truth)))
    prediction = _relabel(as_instances(prediction, "prediction", _spatial_ndim(prediction)))
    _, table, sizes_true, sizes_pred = _iou_matrix(truth, prediction)
    merged = (table > sizes_true[:, None] / 2.0).sum(0) >= 2      # per predicted object
    split = (table > sizes_pred[None, :] / 2.0).sum(1) >= 2       # per true object
    problems = np.zeros(truth.shape, np.uint8)
    problems[np.concatenate([[False], merged])[prediction]] = 1
    problems[np.concatenate([[False], split])[truth]] = 2
    return problems


def _relabel(labels):
    """Consecutive labels 1..N (so tables stay small for sparse label values)."""
    labels = np.asarray(labels, np.int64)
    if labels.size and labels.max() < 4 * labels.size:   # a lookup table: faster than sorting
        present = np.bincount(labels.ravel()) > 0
        present[0] = True
        return (np.cumsum(present) - 1)[labels]
    values, inverse = np.unique(labels, return_inverse=True)
    if values[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.int64)


def evaluate(truth, prediction, class_names=None, ignored=None):
    """All metrics for one image, as a flat dict of numbers (for tables and JSON).

    ``truth`` and ``prediction`` are instance labels; with ``class_names`` (a multi-class
    net) they are class ids: ``iou_NAME`` per class is added and objects are the connected
    components of the foreground. ``missed`` and ``false_positives`` count the true and the
    predicted objects without a match at IoU 0.5. With ``ignored`` (unannotated pixels, see
    :func:`without_ignored`) only the annotated pixels are scored.
    """
    if ignored is not None and class_names is None:
        truth, prediction = without_ignored(truth, prediction, ignored)
    elif ignored is not None:  # class ids: no objects to drop, the pixels count as background
        truth, prediction = (np.where(ignored, 0, a) for a in _pair(truth, prediction))
    if class_names is not None:
        classes = {f"iou_{name}": float(iou) for name, iou in
                   zip(class_names, class_iou(truth, prediction, len(class_names)))}
        truth, prediction = ndi.label(np.asarray(truth) > 0)[0], ndi.label(np.asarray(prediction) > 0)[0]
    else:
        classes = {}
    matching = match_instances(truth, prediction)
    at50 = matching["per_threshold"][0.5]
    return {
        "foreground_iou": foreground_iou(truth, prediction),
        "pixel_error": pixel_error(truth, prediction, None if ignored is None else ~ignored),
        "rand_error": rand_error(truth, prediction),
        **{k: matching[k] for k in ("precision", "recall", "f1", "ap50", "mean_ap", "merged",
                                    "split", "true", "predicted")},
        "missed": at50["fn"], "false_positives": at50["fp"],
        **classes,
    }


TABLE_COLUMNS = ("foreground_iou", "f1", "ap50", "mean_ap", "true", "predicted", "missed",
                 "false_positives", "merged", "split")


def metrics_table(rows, columns=TABLE_COLUMNS):
    """``(text, mean)``: a fixed-width table of per-image metrics (``{name: evaluate(...)}``)
    with a last row of means, and the means as a dict. Per-class IoUs (``iou_NAME``) present in
    every row are added as columns."""
    first = next(iter(rows.values()))
    columns = [*columns, *(c for c in first if c.startswith("iou_") and c not in columns)]
    width = max(len(name) for name in [*rows, "mean"]) + 2
    widths = [max(len(c) + 2, 9) for c in columns]
    lines = ["image".ljust(width) + "".join(c.rjust(w) for c, w in zip(columns, widths))]
    mean = {c: float(np.nanmean([r[c] for r in rows.values()])) for c in columns}
    counts = {c for c in columns if all(isinstance(r[c], (int, np.integer)) for r in rows.values())}
    def cell(value, column, width, is_mean):
        if column not in counts:
            return f"{value:{width}.4f}"
        return f"{value:{width}.1f}" if is_mean else f"{value:{width}d}"

    for name, row in [*rows.items(), ("mean", mean)]:
        lines.append(name.ljust(width) + "".join(cell(row[c], c, w, name == "mean")
                                                 for c, w in zip(columns, widths)))
    return "\n".join(lines), mean
