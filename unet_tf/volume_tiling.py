"""Overlap-tile prediction of a Keras 3-D U-Net (:func:`unet_tf.build_unet_3d`) for volumes of
any size: the geometry of :func:`unet_tf.overlap_tile.predict_volume` (exact: equal to one
pass over the mirrored volume) with tiles sized by memory."""

import weakref

from .backend import tf
from .images import NORMALIZATION, check_volume
from .memory import volume_tile_shape
from .overlap_tile import normalization_range, predict_volume
from .volume_sizes import axis_periods, volume_output_shape


def volume_forward(model, output="probabilities"):
    """The model's inference pass (softmax for ``"probabilities"``) as one traced function for
    any batch and tile shape, cached per model, returning numpy."""
    functions = _FORWARD.setdefault(model, {})
    if output not in functions:
        ref = weakref.ref(model)
        spec = tf.TensorSpec([None, None, None, None, model.input_shape[-1]], tf.float32)
        convert = tf.nn.softmax if output == "probabilities" else tf.identity
        traced = tf.function(lambda x: convert(ref()(x, training=False)), input_signature=[spec],
                             autograph=False)
        functions[output] = lambda tiles: traced(tiles).numpy()
    return functions[output]


_FORWARD = weakref.WeakKeyDictionary()


def predict_volume_tiled(model, volume, plan, normalization=NORMALIZATION, tile_shape=None,
                         batch_size=1, output="probabilities", on_batch=None):
    """Probabilities ``(Z, Y, X, K)`` float32 (or ``output="logits"``) of a whole ``ZYX[C]``
    volume, normalised over the whole volume as in training.

    Args:
        model: a Keras model from :func:`unet_tf.build_unet_3d` with ``plan``.
        tile_shape: a valid input tile; default :func:`unet_tf.memory.volume_tile_shape` (any valid one gives
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
    return predict_volume(volume, volume_forward(model, output), tile_shape, out, axis_periods(plan),
                          value_range, batch_size, on_batch)
