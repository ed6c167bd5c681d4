"""Image conventions shared by training, prediction and export: axes and normalisation.

Images are 2-D ``YX`` or ``YXC`` arrays. Every consumer normalises with :func:`normalize` and the
parameters stored in a model folder's ``config.json`` (``NORMALIZATION`` is the default), so the
numbers seen in training, tiled prediction and exported models are the same.
"""

import numpy as np

from .errors import InvalidType
from .overlap_tile import (apply_range, crop_reflect, normalization_range, percentiles,
                           reflect_index)

__all__ = ["NORMALIZATION", "NORMALIZATION_CHOICES", "as_yxc", "check_image",
           "dataset_normalization", "normalization_for", "normalization_range", "normalize",
           "normalize_with", "percentile_range", "apply_range", "crop_reflect", "reflect_index"]

# Per-image percentile normalisation, the field's habit (CSBDeep/StarDist): robust to a few hot
# pixels and independent of bit depth, so uint8, uint16 and float images all land near [0, 1].
NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}
# What --normalization names: "image" (NORMALIZATION) or "dataset" (one range for all images,
# the training set's percentiles: an image with few objects is then not stretched until its
# background noise looks like cells).
NORMALIZATION_CHOICES = ("image", "dataset")


def dataset_normalization(images, low=NORMALIZATION["low"], high=NORMALIZATION["high"]):
    """A ``normalization`` entry mapping the ``low``/``high`` percentiles of all ``images``
    together (every pixel and channel) to 0/1, for every image alike."""
    pooled = np.concatenate([np.asarray(image).reshape(-1) for image in images])
    lo, hi = percentiles(pooled, (low, high))
    return {"method": "dataset", "low": low, "high": high, "range": [float(lo), float(hi)]}


def normalization_for(choice, images):
    """The ``normalization`` entry for a :data:`NORMALIZATION_CHOICES` name."""
    if choice not in NORMALIZATION_CHOICES:
        raise ValueError(f"normalization must be one of {NORMALIZATION_CHOICES}, got {choice!r}")
    return dict(NORMALIZATION) if choice == "image" else dataset_normalization(images)


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
    return _check_values(as_yxc(image, name), name)


def check_volume(volume, name="volume"):
    """A ``ZYX`` or ``ZYXC`` volume as ``ZYXC``, checked as :func:`check_image` checks."""
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"{name} must be 3-D (ZYX) or 4-D (ZYXC), got shape {volume.shape}")
    return _check_values(volume[..., None] if volume.ndim == 3 else volume, name)


def _check_values(image, name):
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number) \
            or np.issubdtype(image.dtype, np.complexfloating):
        raise InvalidType(f"{name} must hold real intensities (integer or float), got dtype "
                        f"{image.dtype}")
    if image.size == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise ValueError(f"{name} has {bad} NaN/Inf pixels; expected finite intensities")
    return image


def percentile_range(image, low=NORMALIZATION["low"], high=NORMALIZATION["high"]):
    """The ``(lo, hi)`` intensities that :func:`normalize` maps to 0 and 1."""
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise InvalidType(f"image must be a real numeric array, got dtype {image.dtype}")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    lo, hi = percentiles(image, (low, high))
    return float(lo), float(hi)


def normalize(image, low=NORMALIZATION["low"], high=NORMALIZATION["high"]):
    """Map the ``low``/``high`` percentiles of ``image`` (all pixels and channels) to 0/1.

    Returns float32 of the same shape. A constant image maps to zeros (no NaN).
    """
    return apply_range(image, *percentile_range(image, low, high))


def normalize_with(image, normalization):
    """:func:`normalize` with the parameters of a ``config.json`` ``normalization`` entry."""
    return apply_range(image, *normalization_range(image, normalization))
