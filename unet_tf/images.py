"""Image conventions shared by training, prediction and export: axes and normalisation.

Images are 2-D ``YX`` or ``YXC`` arrays. Every consumer normalises with :func:`normalize` and the
parameters stored in a model folder's ``config.json`` (``NORMALIZATION`` is the default), so the
numbers seen in training, tiled prediction and exported models are the same.
"""

import numpy as np

# Per-image percentile normalisation, the field's habit (CSBDeep/StarDist): robust to a few hot
# pixels and independent of bit depth, so uint8, uint16 and float images all land near [0, 1].
NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}


def as_yxc(image, name="image"):
    """Return ``image`` as a ``YXC`` array (a ``YX`` image gets a channel axis of 1)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image[..., None]
    if image.ndim == 3:
        return image
    raise ValueError(f"{name} must be 2-D (YX) or 3-D (YXC), got shape {image.shape}")


def check_image(image, name="image"):
    """``image`` as ``YXC`` after checking what every consumer needs: a real numeric dtype,
    at least one pixel, and no NaN/Inf. Raises ``TypeError``/``ValueError`` naming ``name``."""
    image = as_yxc(image, name)
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number) \
            or np.issubdtype(image.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real intensities (integer or float), got dtype "
                        f"{image.dtype}")
    if image.size == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise ValueError(f"{name} has {bad} NaN/Inf pixels; expected finite intensities")
    return image


def _percentiles(image, qs):
    """``np.percentile(image, qs)`` (linear interpolation); for 8/16-bit images from a histogram,
    exactly, without the sorted copy (a 8192x8192 uint16 image costs 16 KiB, not 128 MiB)."""
    if image.dtype not in (np.uint8, np.uint16) or image.size < 2 ** 16:
        return np.percentile(image, qs)
    counts = np.zeros(2 ** (8 * image.itemsize), np.int64)
    flat = image.reshape(-1)
    for start in range(0, flat.size, 2 ** 22):  # bincount copies to int64: do it in chunks
        counts += np.bincount(flat[start:start + 2 ** 22], minlength=counts.size)
    cumulative = np.cumsum(counts)
    values = []
    for q in qs:
        position = q / 100.0 * (image.size - 1)
        below = int(np.floor(position))
        lower = np.searchsorted(cumulative, below, side="right")
        upper = np.searchsorted(cumulative, min(below + 1, image.size - 1), side="right")
        values.append(lower + (position - below) * (upper - lower))
    return np.array(values)


def normalization_range(image, low=NORMALIZATION["low"], high=NORMALIZATION["high"]):
    """The ``(lo, hi)`` intensities that :func:`normalize` maps to 0 and 1."""
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise TypeError(f"image must be a real numeric array, got dtype {image.dtype}")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    lo, hi = _percentiles(image, (low, high))
    return float(lo), float(hi)


def apply_range(image, lo, hi):
    """``(image - lo) / (hi - lo)`` as float32; a constant image (``hi == lo``) maps to zeros."""
    scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(0.0)
    return (np.asarray(image).astype(np.float32) - np.float32(lo)) * scale


def normalize(image, low=NORMALIZATION["low"], high=NORMALIZATION["high"]):
    """Map the ``low``/``high`` percentiles of ``image`` (all pixels and channels) to 0/1.

    Returns float32 of the same shape. A constant image maps to zeros (no NaN).
    """
    return apply_range(image, *normalization_range(image, low, high))


def range_for(image, normalization):
    """:func:`normalization_range` with the parameters of a ``config.json`` entry."""
    if normalization.get("method") != "percentile":
        raise ValueError(f"unknown normalization method {normalization.get('method')!r}, "
                         "expected 'percentile'")
    return normalization_range(image, normalization["low"], normalization["high"])


def normalize_with(image, normalization):
    """:func:`normalize` with the parameters of a ``config.json`` ``normalization`` entry."""
    return apply_range(image, *range_for(image, normalization))


def reflect_index(index, size):
    """Map any integer indices into ``[0, size)`` by mirroring about the border pixels.

    The mirror of paper Fig. 2 (numpy ``"reflect"``, OpenCV ``BORDER_REFLECT_101``), periodic so
    that it also works when the padding is larger than the image.
    """
    index = np.asarray(index)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)


def crop_reflect(array, top, left, height, width):
    """``array[top:top+height, left:left+width]`` with mirrored content outside the array."""
    if top >= 0 and left >= 0 and top + height <= array.shape[0] and left + width <= array.shape[1]:
        return array[top:top + height, left:left + width]  # inside: a view, no gather
    rows = reflect_index(np.arange(top, top + height), array.shape[0])
    cols = reflect_index(np.arange(left, left + width), array.shape[1])
    return array[np.ix_(rows, cols)] if array.ndim == 2 else array[rows[:, None], cols[None, :]]
