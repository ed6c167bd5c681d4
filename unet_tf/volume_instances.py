"""Instance labels of a volume (``ZYX``) from a 3-D U-Net's class probabilities: the steps of
:mod:`unet_tf.instances` in three dimensions, with SciPy.

Holes of at most ``max_hole`` voxels (background not connected to the volume's faces) are
filled; touching objects are split by a seeded watershed (``"foreground"``: of the distance
transform, with the voxel size as its sampling so distances are physical, seeded at its
h-maxima; ``"boundary"``: of the interior probability, seeded at the connected interiors);
objects smaller than ``min_size`` voxels are dropped. Face connectivity (6) throughout, as
:func:`unet_tf.masks.as_instances` splits binary volumes. The settings are those of
:func:`unet_tf.instances.check_settings` (``split``'s ``h`` in finest-axis voxels).

``export/volume_instances.py`` is a copy for the TensorFlow-free runtime, equal but for that one
import (``from instances import``, a sibling file there); it needs SciPy.
"""

import numpy as np
from scipy import ndimage as ndi

from .instances import check_settings, fill_holes, remove_small   # kit copy: from instances

_FACES = ndi.generate_binary_structure(3, 1)
_LEVELS = 32  # flooding order: priority quantised to this many levels (as in 2-D)


def label_volume(probabilities, settings=None, voxel_size=(1.0, 1.0, 1.0)):
    """Instance labels ``(Z, Y, X)`` (uint16, int32 beyond 65535 objects) of probabilities
    ``(Z, Y, X, K)``, or class ids (uint8) for ``{"target": "classes"}``."""
    settings = dict(settings or {})
    probabilities = np.asarray(probabilities, np.float32)
    if settings.get("target") == "classes":
        return probabilities.argmax(-1).astype(np.uint8 if probabilities.shape[-1] <= 256
                                               else np.uint16)
    s = check_settings(settings)
    expected = 3 if s["target"] == "boundary" else 2
    if probabilities.ndim != 4 or probabilities.shape[3] != expected:
        raise ValueError(f"the {s['target']} target needs volume probabilities (Z, Y, X, "
                         f"{expected}), got shape {probabilities.shape}")
    foreground = fill_holes_3d(1.0 - probabilities[..., 0] >= s["threshold"], s["max_hole"])
    if s["target"] == "boundary":
        interior = probabilities[..., 1]
        seeds = ndi.label(foreground & (interior >= probabilities[..., 2]), _FACES)[0]
        labels = flood_3d(seeds, interior, foreground)
    elif s["split"]:
        finest = min(voxel_size)
        distance = distance_3d(foreground, [v / finest for v in voxel_size])
        seeds = ndi.label(h_maxima_3d(distance, s["split"]), _FACES)[0]
        labels = flood_3d(seeds, distance, foreground)
    else:
        labels = ndi.label(foreground, _FACES)[0]
    return remove_small(labels, s["min_size"])


def fill_holes_3d(mask, max_volume):
    """``mask`` (bool ``ZYX``) with holes of at most ``max_volume`` voxels filled: enclosed in
    3-D, or in a slice's plane (a stack of a few slices has dark spots inside its nuclei that
    reach the top or bottom face, so are no 3-D holes; their area counts as voxels)."""
    mask = np.asarray(mask, bool)
    if not max_volume:
        return mask
    mask = np.stack([fill_holes(plane, max_volume) for plane in mask])
    holes, count = ndi.label(~mask, _FACES)
    sizes = np.bincount(holes.ravel(), minlength=count + 1)
    fill = sizes <= max_volume
    faces = np.concatenate([np.ravel(holes[i]) for i in (0, -1)] +
                           [np.ravel(holes[:, i]) for i in (0, -1)] +
                           [np.ravel(holes[:, :, i]) for i in (0, -1)])
    fill[np.unique(faces)] = False   # background reaching a face is not a hole
    fill[0] = False                  # label 0 is the foreground itself
    return mask | fill[holes]


def distance_3d(mask, sampling):
    """``ndi.distance_transform_edt(mask, sampling).astype(float32)``, bit for bit, in a third
    of its memory: SciPy keeps four volume-sized arrays of offsets (~49 bytes a voxel, the
    peak of labelling a chunk); here the nearest background voxel's indices (12 bytes) and
    the float32 result, the distances computed a slice at a time as SciPy does."""
    nearest = ndi.distance_transform_edt(mask, sampling=sampling, return_distances=False,
                                         return_indices=True)
    distance = np.empty(mask.shape, np.float32)
    rows, columns = np.ogrid[:mask.shape[1], :mask.shape[2]]
    for z in range(mask.shape[0]):
        squares = 0.0
        for offset, step in zip((nearest[0, z] - z, nearest[1, z] - rows,
                                 nearest[2, z] - columns), sampling):
            scaled = offset.astype(np.float64) * step
            squares = squares + scaled * scaled
        distance[z] = np.sqrt(squares)
    return distance


def h_maxima_3d(height, h):
    """The regional maxima of ``height`` (>= 0) rising at least ``h`` above every path to a
    higher one (bool), as :func:`unet_tf.instances.h_maxima`, in 3-D."""
    height = np.asarray(height, np.float32)
    marker = height - np.float32(h)
    np.maximum(marker, 0, out=marker)
    domes = geodesic_reconstruction_3d(marker, height)
    del marker
    step = np.float32(1e-3)
    lowered = domes - step
    np.copyto(lowered, domes, where=height <= 0)
    rest = geodesic_reconstruction_3d(lowered, domes)
    del lowered
    np.subtract(domes, rest, out=rest)
    maxima = rest >= step / 2
    return np.logical_and(maxima, height > 0, out=maxima)


def geodesic_reconstruction_3d(marker, mask):
    """Reconstruction by dilation (face neighbours) of ``marker`` under ``mask``, computed in
    the bounding box of ``mask > 0`` (outside it both are 0 and nothing moves)."""
    current = np.minimum(marker, mask)
    box = ndi.find_objects((mask > 0).astype(np.uint8))
    if not box or box[0] is None:
        return current
    inner, limit = current[box[0]], mask[box[0]]
    while True:
        grown = inner
        for _ in range(4):   # check for stability every 4 dilations
            grown = _dilate(grown)
            np.minimum(grown, limit, out=grown)
        if np.array_equal(grown, inner):
            current[box[0]] = inner
            return current
        inner = grown


def flood_3d(seeds, priority, mask):
    """Seeded watershed in ``mask`` (bool), higher ``priority`` first, as
    :func:`unet_tf.instances.flood`: a connected part of ``mask`` with one seed becomes that
    seed's object, one without a seed an object of its own; parts with several seeds are
    flooded level by level in their bounding box. Returns int32 labels.

    Volume-sized arrays are few and short-lived (a chunk's labelling is the peak memory of
    volume prediction): each part's label is unique (a seed's id, or a new one past them), so
    the parts' map is dropped once labels exist."""
    mask = np.asarray(mask, bool)
    seeds = np.where(mask, seeds, 0).astype(np.int32, copy=False)   # int32: volumes are large
    parts, count = ndi.label(mask, _FACES)
    seeded = seeds > 0
    pairs = np.unique(np.stack([parts[seeded], seeds[seeded]]), axis=1)  # (part, seed) present
    del seeded
    seeds_in = np.bincount(pairs[0], minlength=count + 1)
    label_of_part = np.arange(count + 1, dtype=np.int32) + int(seeds.max()) + 1
    label_of_part[pairs[0]] = pairs[1]
    label_of_part[0] = 0
    boxes = ndi.find_objects(parts)
    labels = label_of_part[parts]
    del parts
    for part in np.nonzero(seeds_in >= 2)[0]:
        box = boxes[part - 1]
        inside = labels[box] == label_of_part[part]
        flooded = _flood_levels(np.where(inside, seeds[box], 0), priority[box], inside)
        np.copyto(labels[box], flooded, where=inside)
    return labels


def _flood_levels(seeds, priority, mask):
    """``seeds`` (a fresh int32 array, flooded in place) grown over ``mask`` level by level."""
    labels = seeds
    high = priority.max(where=mask, initial=-np.inf)
    low = priority.min(where=mask, initial=np.inf)
    for level in np.linspace(high, low, _LEVELS):
        allowed = priority >= level
        allowed &= mask
        _grow(labels, allowed)
    return labels


def _grow(labels, allowed):
    """Dilate ``labels`` into unlabelled ``allowed`` voxels until none is left to reach."""
    while True:
        grown = _dilate(labels)
        new = labels == 0
        new &= allowed
        new &= grown > 0
        if not new.any():
            return
        labels[new] = grown[new]


def _dilate(array):
    """Grey dilation over face neighbours (borders: nearest), by in-place maxima of shifted
    views: several times faster than ``ndi.grey_dilation`` with a footprint."""
    out = array.copy()
    for axis in range(array.ndim):
        lower = [slice(None)] * array.ndim
        upper = [slice(None)] * array.ndim
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        lower, upper = tuple(lower), tuple(upper)
        np.maximum(out[upper], array[lower], out=out[upper])
        np.maximum(out[lower], array[upper], out=out[lower])
    return out
