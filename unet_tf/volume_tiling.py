"""Overlap-tile prediction of a Keras 3-D U-Net (:func:`unet_tf.build_unet_3d`) for volumes of
any size: the geometry of :func:`unet_tf.overlap_tile.predict_volume` (exact: equal to one
pass over the mirrored volume) with tiles sized by memory."""

import math
import weakref

from .backend import tf
from .images import NORMALIZATION, check_volume
from .memory import inference_budget
from .overlap_tile import normalization_range, predict_volume
from .volume_sizes import (axis_rule, next_valid_volume_shape, per_axis,
                           volume_activation_bytes, volume_output_shape)


def periods(plan):
    """The pooling period along each axis (the product of its pools)."""
    return [math.prod(pools) for pools, _ in per_axis(plan)]


def volume_tile_shape(volume_shape, plan, filters, channels=1, num_classes=2, batch_size=1,
                      budget=None):
    """The tile prediction uses for a ``ZYX`` ``volume_shape``: per axis the smallest valid
    size whose output covers the volume, then the largest axis shrunk by its size step
    until a batch fits ``budget`` bytes (default :func:`unet_tf.memory.inference_budget`);
    never below an output of one pooling period (tiles must line up)."""
    budget = budget or inference_budget()
    rules = [axis_rule(p, k) for p, k in per_axis(plan)]
    tile = list(next_valid_volume_shape([n + shrink for n, (_, _, shrink)
                                         in zip(volume_shape[:3], rules)], plan))
    least = next_valid_volume_shape([period + shrink for period, (_, _, shrink)
                                     in zip(periods(plan), rules)], plan)
    least = [min(t, m) for t, m in zip(tile, least)]
    fits = lambda t: batch_size * volume_activation_bytes(t, plan, filters, channels,
                                                          num_classes) <= budget
    while not fits(tile):
        shrinkable = [a for a in range(3) if tile[a] - rules[a][1] >= least[a]]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda a: tile[a])
        tile[axis] -= rules[axis][1]
    return tuple(tile)


def volume_forward(model, output="probabilities"):
    """The model's inference pass (softmax for ``"probabilities"``) as one traced function for
    any batch and tile shape, cached per model, returning numpy."""
    functions = _FORWARD.setdefault(model, {})
    if output not in functions:
        ref = weakref.ref(model)
        spec = tf.TensorSpec([None, None, None, None, model.input_shape[-1]], tf.float32)
        convert = tf.nn.softmax if output == "probabilities" else tf.identity
        traced = tf.function(lambda x: convert(ref()(x, training=False)), input_signature=[spec])
        functions[output] = lambda tiles: traced(tiles).numpy()
    return functions[output]


_FORWARD = weakref.WeakKeyDictionary()


def predict_volume_tiled(model, volume, plan, normalization=NORMALIZATION, tile_shape=None,
                         batch_size=1, output="probabilities", on_batch=None):
    """Probabilities ``(Z, Y, X, K)`` float32 (or ``output="logits"``) of a whole ``ZYX[C]``
    volume, normalised over the whole volume as in training.

    Args:
        model: a Keras model from :func:`unet_tf.build_unet_3d` with ``plan``.
        tile_shape: a valid input tile; default :func:`volume_tile_shape` (any valid one gives
            the same result, up to float rounding).
    """
    volume = check_volume(volume)
    channels = model.input_shape[-1]
    if volume.shape[3] != channels:
        raise ValueError(f"volume has {volume.shape[3]} channels, the model expects {channels}")
    if tile_shape is None:
        filters = model.get_layer("down0_conv1").filters
        tile_shape = volume_tile_shape(volume.shape, plan, filters, channels,
                                       model.output_shape[-1], batch_size)
    tile_shape = tuple(tile_shape)
    out = volume_output_shape(tile_shape, plan)
    value_range = normalization_range(volume, normalization)
    return predict_volume(volume, volume_forward(model, output), tile_shape, out, periods(plan),
                          value_range, batch_size, on_batch)
