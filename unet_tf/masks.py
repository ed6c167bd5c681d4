"""Masks as the user gives them: the checks every reader of a mask goes through, unannotated
pixels split off (the ignore label), instance labels from instance or binary masks. numpy and
SciPy only."""

import numpy as np
from scipy import ndimage as ndi


def check_mask(mask, name="mask", ndim=2):
    """A ``YX`` (``ndim=3``: ``ZYX``) label image with whole, non-negative values (bool becomes
    uint8), or a ``ValueError`` that says what was found."""
    mask = np.asarray(mask)
    if mask.ndim != ndim:
        axes = "ZYX"[-ndim:] if ndim <= 3 else f"{ndim} axes"
        raise ValueError(f"{name} must be a {ndim}-D ({axes}) label image, got shape "
                         f"{mask.shape}")
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.number) or np.issubdtype(mask.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold integer labels, got dtype {mask.dtype}")
    if not np.issubdtype(mask.dtype, np.integer):
        finite = np.isfinite(mask)
        if not finite.all() or np.any(np.mod(mask, 1) != 0):
            raise ValueError(f"{name} must hold integer labels, got dtype {mask.dtype} "
                             "with non-integer values")
    if mask.size and mask.min() < 0:
        raise ValueError(f"{name} must hold labels >= 0 (0 = background), found {mask.min()}")
    return mask


def split_ignored(mask, ignore_label=None, name="mask", ndim=2):
    """``(mask, ignored)``: the checked ``YX`` mask with its unannotated pixels (those equal
    to ``ignore_label``) set to 0, and those pixels as a boolean array (``None`` without an
    ignore label). Unannotated pixels are neither object nor background: they weigh 0 in
    the loss and are left out of every statistic and score."""
    mask = check_mask(mask, name, ndim)
    if ignore_label is None:
        return mask, None
    ignored = mask == ignore_label
    return np.where(ignored, 0, mask).astype(mask.dtype), ignored


def as_instances(mask, name="mask", ndim=2):
    """Instance labels (int32, 0 = background) from an instance or binary ``YX`` (``ndim=3``:
    ``ZYX``) mask.

    A mask with a single non-zero value (binary: 0/1, 0/255, bool) is split into its connected
    components (face connectivity: 4 in 2-D, 6 in 3-D, so cells touching only at a corner or an
    edge stay apart); any other integer mask is taken as instance labels already.
    """
    mask = check_mask(mask, name, ndim)
    values = mask[mask > 0]
    if values.size and values.min() == values.max():
        return ndi.label(mask > 0)[0].astype(np.int32)
    return mask.astype(np.int32)


def correction_region(original, edited, margin=8, ndim=2):
    """Where a person corrected a label image: every object, before or after, with a changed
    pixel, and ``margin`` px around it (the background next to a fixed object was looked at
    too). Boolean ``YX`` (``ndim=3``: ``ZYX``); all False when nothing changed. Training on a
    correction marks the rest unannotated (see :func:`split_ignored`): it was not checked."""
    original = check_mask(original, "original labels", ndim)
    edited = check_mask(edited, "labels", ndim)
    if original.shape != edited.shape:
        raise ValueError(f"the labels are {edited.shape}, the segmentation was {original.shape}")
    changed = original != edited
    if not changed.any():
        return changed
    region = changed.copy()
    for labels in (original, edited):
        touched = np.unique(labels[changed])
        region |= np.isin(labels, touched[touched > 0])
    return ndi.binary_dilation(region, iterations=margin) if margin else region
