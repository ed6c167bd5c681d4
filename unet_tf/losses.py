"""The paper's energy function: a per-pixel weighted softmax cross-entropy.

Keras already computes it exactly: ``SparseCategoricalCrossentropy(from_logits=True)`` applied to
``(B, H, W, K)`` logits and ``(B, H, W)`` labels gives a per-pixel loss, and a ``(B, H, W)``
``sample_weight`` (the weight map, passed as the third element of a dataset's ``(x, y, w)``)
multiplies it pixel by pixel. The ``"sum_over_batch_size"`` reduction then divides the weighted
sum by the number of pixels, i.e. the paper's energy divided by a constant.
"""

from .backend import keras


def weighted_pixel_loss():
    """``sum(w * -log softmax(logits)[y]) / pixels``; pass the weight map as ``sample_weight``."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="weighted_pixel_ce")
