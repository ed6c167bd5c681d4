"""Instance labels from a U-Net's class probabilities: threshold, fill holes, split touching
objects, drop specks.

numpy and OpenCV only: ``export/instances.py`` is a byte copy that the TensorFlow-free runtime
(``export/edge_predict.py``) imports, so a device gives the labels ``unet-tf predict`` gives.

Holes of at most ``max_hole`` pixels in the foreground are filled first; then, by the target
(``settings["target"]``):

- ``"foreground"`` (two classes, the paper's): pixels with a foreground probability of at least
  ``threshold`` are foreground; touching objects are split by a seeded watershed of the distance
  transform whose seeds are its h-maxima (``split``: ``h`` in pixels, ``None`` = connected
  components only). A neck narrower than the objects on both sides by more than ``h`` is cut.
- ``"boundary"`` (three classes: background, interior, boundary): seeds are the connected
  interiors; each grows into the foreground (interior or boundary) along the interior
  probability, so touching cells are parted on their predicted boundary.

Last, objects smaller than ``min_size`` pixels are dropped. :func:`unet_tf.postprocess.tune`
picks the settings on validation images.
"""

import cv2
import numpy as np

INSTANCE_TARGETS = ("foreground", "boundary")
DEFAULT_SETTINGS = {"target": "foreground", "threshold": 0.5, "split": None, "min_size": 0,
                    "max_hole": 0}
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_LEVELS = 32  # flooding order of the watershed: priority quantised to this many levels


def check_settings(settings):
    """``settings`` completed with the defaults; ``ValueError`` naming a bad one."""
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown post-processing settings {unknown}; known: "
                         f"{sorted(DEFAULT_SETTINGS)}")
    s = {**DEFAULT_SETTINGS, **settings}
    checks = [
        (s["target"] in INSTANCE_TARGETS,
         f"target must be one of {INSTANCE_TARGETS}, got {s['target']!r}"),
        (0 < s["threshold"] < 1, f"threshold must be in (0, 1), got {s['threshold']!r}"),
        (s["split"] is None or s["split"] > 0, f"split must be None or h > 0 px, got {s['split']!r}"),
        (s["min_size"] >= 0, f"min_size must be >= 0 pixels, got {s['min_size']!r}"),
        (s["max_hole"] >= 0, f"max_hole must be >= 0 pixels, got {s['max_hole']!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return s


def label_image(probabilities, settings=None):
    """What ``predict`` writes for class probabilities ``(H, W, K)``: instance labels (uint16,
    int32 beyond 65535 objects) for the ``foreground`` and ``boundary`` targets, class ids
    (uint8, uint16 beyond 256 classes) for ``{"target": "classes"}``."""
    settings = dict(DEFAULT_SETTINGS if settings is None else settings)
    probabilities = np.asarray(probabilities)
    if settings.get("target") == "classes":
        return probabilities.argmax(-1).astype(np.uint8 if probabilities.shape[-1] <= 256
                                               else np.uint16)
    return label_instances(probabilities, settings)


def label_instances(probabilities, settings=None):
    """Instance labels ``(H, W)`` (0 background, 1..N, uint16 or int32 beyond 65535) from
    class probabilities ``(H, W, K)``: ``K = 2`` for the ``"foreground"`` target, 3 for
    ``"boundary"`` (see the module docstring for the steps)."""
    s = check_settings(settings or {})
    probabilities = np.asarray(probabilities, np.float32)
    expected = 3 if s["target"] == "boundary" else 2
    if probabilities.ndim != 3 or probabilities.shape[2] != expected:
        raise ValueError(f"the {s['target']} target needs probabilities (H, W, {expected}), got "
                         f"shape {probabilities.shape}")
    foreground = fill_holes(1.0 - probabilities[..., 0] >= s["threshold"], s["max_hole"])
    if s["target"] == "boundary":
        interior = probabilities[..., 1]
        seeds = _components(foreground & (interior >= probabilities[..., 2]), 8)
        labels = flood(seeds, interior, foreground)
    elif s["split"]:
        distance = cv2.distanceTransform(foreground.astype(np.uint8), cv2.DIST_L2, 5)
        labels = flood(_components(h_maxima(distance, s["split"]), 8), distance, foreground)
    else:
        labels = _components(foreground, 4)
    return remove_small(labels, s["min_size"])


def fill_holes(mask, max_area):
    """``mask`` (bool) with its holes (background not connected to the image border) of at
    most ``max_area`` pixels filled."""
    mask = np.asarray(mask, bool)
    if not max_area:
        return mask
    count, holes, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), None, 4,
                                                              cv2.CV_32S)
    x, y, w, h, area = (stats[:, i] for i in range(5))
    inner = (x > 0) & (y > 0) & (x + w < mask.shape[1]) & (y + h < mask.shape[0])
    fill = inner & (area <= max_area)
    fill[0] = False  # label 0 is the foreground itself
    return mask | fill[holes]


def h_maxima(height, h):
    """The regional maxima of ``height`` (>= 0, 0 outside the objects) that rise at least
    ``h`` above every path to a higher maximum (bool): the regional maxima of the
    reconstruction of ``height - h`` under ``height``. Twin peaks of one object joined by a
    ridge less than ``h`` below them form one connected region (one seed)."""
    height = np.asarray(height, np.float32)
    # Markers clipped at 0: the background is final from the start, so the dilations only
    # travel inside the objects (the result is the same).
    domes = geodesic_reconstruction(np.maximum(height - np.float32(h), 0), height)
    step = np.float32(1e-3)  # regional maxima of ``domes``: plateaus with no higher neighbour
    lowered = np.where(height > 0, domes - step, domes)
    return (domes - geodesic_reconstruction(lowered, domes) >= step / 2) & (height > 0)


def geodesic_reconstruction(marker, mask):
    """Reconstruction by dilation: ``marker`` dilated within ``mask`` until stable."""
    current = np.minimum(marker, mask)
    while True:
        grown = current
        for _ in range(4):  # check for stability every 4 dilations: cheaper than every one
            grown = np.minimum(cv2.dilate(grown, _CROSS), mask)
        if np.array_equal(grown, current):
            return current
        current = grown


def flood(seeds, priority, mask):
    """Seeded watershed: grow the labelled ``seeds`` (int, 0 = none) into ``mask`` (bool),
    higher ``priority`` first (pixels of one level grow from the nearest seed). A connected
    part of ``mask`` with one seed becomes that seed's object, one without a seed an object
    of its own; only parts with several seeds are flooded (in their bounding box, which keeps
    it fast). Returns int32 labels."""
    mask = np.asarray(mask, bool)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), None, 4,
                                                              cv2.CV_32S)
    seeds = np.where(mask, seeds, 0).astype(np.int64)
    seeded = seeds > 0
    pairs = np.unique(np.stack([parts[seeded], seeds[seeded]]), axis=1)  # (part, seed) present
    seeds_in = np.bincount(pairs[0], minlength=count)
    offset = int(seeds.max()) + 1
    label_of_part = np.arange(count, dtype=np.int64) + offset   # parts without a seed
    label_of_part[pairs[0]] = pairs[1]                            # parts with one seed
    label_of_part[0] = 0
    labels = label_of_part[parts]
    for part in np.nonzero(seeds_in >= 2)[0]:
        x, y, w, h = stats[part, :4]
        box = (slice(y, y + h), slice(x, x + w))
        inside = parts[box] == part
        flooded = _flood_levels(np.where(inside, seeds[box], 0), priority[box], inside)
        labels[box][inside] = flooded[inside]
    return labels.astype(np.int32)


def _flood_levels(seeds, priority, mask):
    """:func:`flood` of one connected part: grow level by level, from the highest priority."""
    labels = seeds.astype(np.float32)  # cv2.dilate works on float32, exact to 2**24
    inside = priority[mask]
    for level in np.linspace(inside.max(), inside.min(), _LEVELS):
        _grow(labels, mask & (priority >= level))
    return labels.astype(np.int64)


def _grow(labels, allowed):
    """Dilate ``labels`` into the unlabelled ``allowed`` pixels until none is left to reach
    (in place; the larger label wins a pixel two fronts reach at once)."""
    while True:
        grown = cv2.dilate(labels, _CROSS)
        new = allowed & (labels == 0) & (grown > 0)
        if not new.any():
            return
        labels[new] = grown[new]


def _components(mask, connectivity):
    return cv2.connectedComponents(np.asarray(mask, np.uint8), connectivity=connectivity,
                                   ltype=cv2.CV_32S)[1]


def remove_small(labels, min_size):
    """Objects of fewer than ``min_size`` pixels removed, the rest numbered 1..N (uint16, or
    int32 for more than 65535 objects)."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    renumber = np.zeros(len(sizes), np.int64)
    renumber[keep] = np.arange(1, keep.sum() + 1)
    return renumber[labels].astype(np.uint16 if keep.sum() < 2 ** 16 else np.int32)
