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
