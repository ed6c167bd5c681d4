"""Where training tiles are drawn: uniformly, or centred on an annotated object.

Random tiles of a large frame holding a few annotated cells almost never hold one (0.5 %
foreground: the net learned background, F1 0.00), so a planned fraction of the tiles is
centred on a random pixel of a random object, as nnU-Net does with a third of its patches
(``oversample_foreground_percent``). Objects are drawn uniformly, so small ones count as much as
large ones; with class-id masks, a class is drawn first, so a rare class counts as much as a
common one. With partial annotations (an ignore label), the other tiles are centred on a random
annotated pixel instead of a uniform position, so they never fall wholly on unannotated pixels.

Plain numpy, for the input pipelines (:mod:`unet_tf.data`, :mod:`unet_tf.volume_data`) and the
planner alike. Arrays are ``YX`` (or ``ZYX``); a window is an output window of ``out x out``
pixels (or a size per axis) given by its top-left corner.
"""

import threading

import numpy as np

from .masks import as_instances


def object_groups(mask, target):
    """Flat pixel indices to centre tiles on (int64 arrays), one array per object (instance
    targets: an instance or binary ``YX`` mask, 0 = background) or per class present
    (``target == "classes"``: class ids, each a group); empty where nothing is annotated."""
    mask = np.asarray(mask)
    if target == "classes":
        values = mask.ravel()
        return [np.flatnonzero(values == k) for k in np.unique(values) if k > 0]
    instances = as_instances(mask, ndim=mask.ndim).ravel()
    order = np.argsort(instances, kind="stable")
    bounds = np.searchsorted(instances[order], np.arange(1, instances.max() + 2))
    return [group for group in np.split(order, bounds)[1:-1] if group.size]


def window_range(n, out):
    """The top (or left) corners a window may take along an axis of ``n`` pixels: it stays
    inside the image, or covers all of it (negative corners) when the image is smaller."""
    return min(0, n - out), max(0, n - out)


def window_at(centre, shape, out):
    """The top-left corner of the window centred on the flat pixel index ``centre``, moved
    inside the image's :func:`window_range` (``out``: a size, or one per axis)."""
    outs = _per_axis(out, shape)
    return tuple(int(np.clip(c - o // 2, *window_range(n, o)))
                 for c, n, o in zip(np.unravel_index(int(centre), shape), shape, outs))


def _per_axis(out, shape):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,) * len(shape)


def draw_window(rng, shape, out, groups=(), annotated=None, foreground_tiles=0.0):
    """The top-left corner of one training window.

    With probability ``foreground_tiles`` (where ``groups`` holds objects) it is centred on a
    random pixel of a random group; otherwise on a random pixel of ``annotated`` (flat indices,
    given only with partial annotations) or at a uniform position. ``rng`` is consumed for the
    choice only when ``foreground_tiles > 0``, so runs without it draw what they always drew.
    """
    if foreground_tiles > 0 and rng.random() < foreground_tiles and len(groups):
        group = groups[rng.integers(len(groups))]
        return window_at(group[rng.integers(len(group))], shape, out)
    if annotated is not None and len(annotated):
        return window_at(annotated[rng.integers(len(annotated))], shape, out)
    return tuple(int(rng.integers(lo, hi + 1))
                 for lo, hi in (window_range(n, o) for n, o in zip(shape, _per_axis(out, shape))))


def _windows_holding(foreground, out):
    """``holds[top - lo_y, left - lo_x]``: whether the window at each allowed corner holds a
    foreground pixel (a box sum over a zero-padded integral image)."""
    h, w = foreground.shape
    padded = np.zeros((h + 2 * out + 1, w + 2 * out + 1), np.int64)
    padded[out + 1:out + 1 + h, out + 1:out + 1 + w] = foreground
    total = padded.cumsum(0).cumsum(1)
    (ylo, yhi), (xlo, xhi) = window_range(h, out), window_range(w, out)
    tops = np.arange(ylo, yhi + 1)[:, None] + out     # rows of the padded image
    lefts = np.arange(xlo, xhi + 1)[None, :] + out
    box = (total[tops + out, lefts + out] - total[tops, lefts + out]
           - total[tops + out, lefts] + total[tops, lefts])
    return box > 0


def uniform_foreground_share(mask, out, ignored=None):
    """The share of non-object-centred windows (see :func:`draw_window`) that hold an
    annotated object pixel: over uniform corners, or, with ``ignored`` (a boolean ``YX``
    array of unannotated pixels), over windows centred on annotated pixels."""
    foreground = np.asarray(mask) > 0
    holds = _windows_holding(foreground, out)
    if ignored is None or not ignored.any():
        return float(holds.mean())
    annotated = np.flatnonzero(~ignored.ravel())
    if not annotated.size:
        return 0.0
    (ylo, _), (xlo, _) = (window_range(n, out) for n in foreground.shape)
    corners = np.array([window_at(c, foreground.shape, out) for c in
                        annotated[:: max(1, annotated.size // 20000)]])  # a sample suffices
    return float(holds[corners[:, 0] - ylo, corners[:, 1] - xlo].mean())


def expected_foreground_share(uniform_shares, has_objects, foreground_tiles):
    """The share of training windows expected to hold an object: each image is visited
    equally often; an object-centred draw holds one, the others hold one at the image's
    :func:`uniform_foreground_share`; images without objects draw only the others."""
    shares = [f + (1 - f) * u for u, f in
              ((u, foreground_tiles if has else 0.0) for u, has in zip(uniform_shares, has_objects))]
    return float(np.mean(shares))


class TileCounter:
    """How many training windows were drawn and how many held an annotated object (filled by
    the input pipeline's threads; tiles drawn ahead by prefetching are counted too)."""

    def __init__(self):
        self.drawn = self.with_foreground = 0
        self._lock = threading.Lock()

    def count(self, labels, weights):
        holds = bool(np.any((labels > 0) & (weights > 0)))
        with self._lock:
            self.drawn += 1
            self.with_foreground += holds

    @property
    def share(self):
        return self.with_foreground / self.drawn if self.drawn else 0.0

