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


def normalize(image, low=NORMALIZATION["low"], high=NORMALIZATION["high"]):
    """Map the ``low``/``high`` percentiles of ``image`` (all pixels and channels) to 0/1.

    Returns float32 of the same shape. A constant image maps to zeros (no NaN).
    """
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise TypeError(f"image must be a real numeric array, got dtype {image.dtype}")
    lo, hi = np.percentile(image, (low, high))
    scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(0.0)
    return (image.astype(np.float32) - np.float32(lo)) * scale


def normalize_with(image, normalization):
    """:func:`normalize` with the parameters of a ``config.json`` ``normalization`` entry."""
    if normalization.get("method") != "percentile":
        raise ValueError(f"unknown normalization method {normalization.get('method')!r}, "
                         "expected 'percentile'")
    return normalize(image, normalization["low"], normalization["high"])


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
    rows = reflect_index(np.arange(top, top + height), array.shape[0])
    cols = reflect_index(np.arange(left, left + width), array.shape[1])
    return array[np.ix_(rows, cols)] if array.ndim == 2 else array[rows[:, None], cols[None, :]]
