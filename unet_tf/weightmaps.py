"""The paper's per-pixel weight maps (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``d1``/``d2`` are the distances from a background pixel to the nearest and second-nearest cell;
the border term makes the network learn the thin background gaps between touching cells.

Computing ``d1``/``d2`` naively needs one distance transform per cell over the whole image,
O(cells x pixels). The border term is below ``tolerance`` wherever ``d1 + d2 >= reach`` with
``reach = sigma * sqrt(2 ln(w0 / tolerance))``, and since ``d1 <= d2`` that includes every pixel
farther than ``reach`` from its second-nearest cell. So each cell's distances are only needed in a
window of ``reach`` around it: the cost becomes ~ O(cells x window) ~ O(pixels), and the result
differs from the exact map by at most ``tolerance``.
"""

import cv2
import numpy as np
from scipy import ndimage as ndi

from .masks import as_instances


def class_weight_map(foreground, class_weights="balanced", ignored=None):
    """``w_c``: per-pixel weights of the background (False) and foreground (True) classes.

    ``"balanced"`` weighs each present class by ``pixels / (classes_present * class_pixels)``,
    counting annotated pixels only (not those ``ignored``, a boolean array);
    a ``(w_background, w_foreground)`` tuple or ``{0: w_bg, 1: w_fg}`` dict gives them directly;
    ``None`` gives 1 everywhere. Ignored pixels keep their class's weight: the caller zeroes them.
    """
    foreground = np.asarray(foreground, dtype=bool)
    if class_weights is None:
        return np.ones(foreground.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced', a (background, foreground) pair, "
                             f"a {{0: ..., 1: ...}} dict or None, got {class_weights!r}")
        counted = foreground if ignored is None else foreground[~ignored]
        counts = np.array([counted.size - counted.sum(), counted.sum()], np.float64)
        present = counts > 0
        weights = np.ones(2)
        weights[present] = counted.size / (present.sum() * counts[present])
    else:
        if isinstance(class_weights, dict):
            class_weights = [class_weights.get(0), class_weights.get(1)]
        weights = np.asarray(class_weights, dtype=np.float64)
        if weights.shape != (2,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"class_weights must give two finite weights >= 0 "
                             f"(background, foreground), got {class_weights!r}")
    return np.where(foreground, weights[1], weights[0]).astype(np.float32)


def border_reach(w0, sigma, tolerance):
    """Distance ``d1 + d2`` beyond which the border term is below ``tolerance``."""
    if w0 <= tolerance:
        return 0.0
    return sigma * np.sqrt(2.0 * np.log(w0 / tolerance))


def _two_nearest_distances(instances, reach, spacing=None):
    """``d1``/``d2`` (float32, ``inf`` where farther than ``reach``) from per-cell windows;
    distances in units of ``spacing`` (one per axis; ``None``: 1 per axis, pixels)."""
    d1 = np.full(instances.shape, np.inf, np.float32)
    d2 = np.full(instances.shape, np.inf, np.float32)
    spacing = (1.0,) * instances.ndim if spacing is None else tuple(map(float, spacing))
    margins = [int(np.ceil(reach / s)) + 1 for s in spacing]
    planar = instances.ndim == 2 and spacing == (1.0, 1.0)
    for label, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        window = tuple(slice(max(b.start - m, 0), min(b.stop + m, n))
                       for b, m, n in zip(box, margins, instances.shape))
        outside = instances[window] != label
        # Exact Euclidean distance to the nearest pixel of this cell: OpenCV's (Felzenszwalb's
        # algorithm) in 2-D pixels, the fastest here; SciPy's, with the voxel size, otherwise.
        distance = (cv2.distanceTransform(outside.astype(np.uint8), cv2.DIST_L2,
                                          cv2.DIST_MASK_PRECISE) if planar
                    else ndi.distance_transform_edt(outside, sampling=spacing).astype(np.float32))
        near1, near2 = d1[window], d2[window]  # views: updated in place
        np.minimum(near2, np.maximum(near1, distance), out=near2)
        np.minimum(near1, distance, out=near1)
    return d1, d2


def weight_map(instances, w0=10.0, sigma=5.0, class_weights="balanced", tolerance=1e-6,
               ignored=None, spacing=None):
    """The U-Net weight map of an instance (or binary) ``YX`` label image, float32 ``(H, W)``;
    of a ``ZYX`` volume with ``spacing``, float32 ``(Z, Y, X)``.

    Args:
        instances: 0 = background, 1..N = cells, any integer dtype. A binary mask (one non-zero
            value) is first split into connected components, see :func:`as_instances`.
        w0, sigma: height and width (pixels) of the border term; the paper uses 10 and ~5.
        class_weights: ``w_c``, see :func:`class_weight_map`.
        tolerance: largest difference allowed from the exact map (the border term is skipped
            where it is smaller than this).
        ignored: a boolean ``YX`` array of unannotated pixels (see :func:`split_ignored`):
            they are not cells for the distances, not counted for ``w_c``, and weigh 0.
        spacing: the voxel size, one per axis (``(z, y, x)`` for a volume, whose distances then
            follow it: anisotropic); ``sigma`` is in its units. ``None``: pixels, ``YX`` only.

    The border term is added on background pixels only, and needs two cells: with fewer it is 0.
    Empty, single-cell and all-foreground masks give finite maps without warnings.
    """
    if not (np.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be a finite number >= 0, got {w0!r}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0 (pixels), got {sigma!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    instances = as_instances(instances, "instances", _ndim(instances, spacing))
    background = instances == 0
    weights = class_weight_map(~background, class_weights, ignored)
    reach = border_reach(w0, sigma, tolerance)
    if not (reach == 0 or instances.max() < 2 or not background.any()):
        d1, d2 = _two_nearest_distances(instances, reach, spacing)
        near = background & np.isfinite(d2)
        total = d1[near].astype(np.float64) + d2[near]
        weights[near] += (w0 * np.exp(-total ** 2 / (2.0 * sigma ** 2))).astype(np.float32)
    if ignored is not None:
        weights[ignored] = 0.0
    return weights


def _ndim(instances, spacing):
    if spacing is None:
        if np.ndim(instances) == 3:
            raise ValueError("a ZYX volume's weight map needs its voxel size: spacing=(z, y, x)")
        return 2
    if len(spacing) not in (2, 3) or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 2 or 3 positive voxel sizes, got {spacing!r}")
    return len(spacing)


def weight_map_reference(instances, w0=10.0, sigma=5.0, class_weights="balanced", spacing=None):
    """Brute force: one full-image distance transform per cell, then sort. O(cells x pixels).

    The definition itself, kept as the reference for tests and benchmarks.
    """
    instances = as_instances(instances, "instances", _ndim(instances, spacing))
    background = instances == 0
    weights = class_weight_map(~background, class_weights).astype(np.float64)
    labels = [label for label in np.unique(instances) if label != 0]
    if len(labels) < 2:
        return weights.astype(np.float32)
    distances = np.sort(np.stack([ndi.distance_transform_edt(instances != label, sampling=spacing)
                                  for label in labels]), axis=0)
    border = w0 * np.exp(-(distances[0] + distances[1]) ** 2 / (2.0 * sigma ** 2))
    return (weights + border * background).astype(np.float32)
