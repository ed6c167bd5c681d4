"""Overlap-tile prediction (paper Fig. 2) of a Keras U-Net, for images of any size.

The output is cut into windows; each is predicted from an input tile of size ``T`` around it,
whose context beyond the image border is mirrored. With valid convolutions an output pixel
depends only on the input pixels above it, *and* on where the pooling grid lies: the net is
shift-equivariant only for shifts by the pooling period ``2**(depth-1)``. The windows therefore
start on multiples of that period (the stride is the output size ``O`` rounded down to it, e.g.
388 -> 384 for the paper's 572 tile; tiles overlap by the remainder, which is dropped). Then the
result equals one forward pass over the whole mirror-padded image, exactly: no seams, no blending.
The geometry itself lives in :mod:`unet_tf.overlap_tile`, shared with the TensorFlow-free kit.
"""

import weakref

from .backend import keras, tf
from . import overlap_tile
from .images import NORMALIZATION, check_image
from .layers import InputSizeCheck
from .memory import BATCH_SIZE, check_fits, inference_tile_size
from .sizes import input_size_for_output, output_size, size_rule

OUTPUTS = ("probabilities", "logits", "labels")


def model_geometry(model):
    """``(depth, upsampling, channels, static_tile)`` of a U-Net built by :func:`build_unet`."""
    checks = [layer for layer in model.layers if isinstance(layer, InputSizeCheck)]
    if not checks:
        raise ValueError(f"model {model.name!r} was not built by unet_tf.build_unet "
                         "(it has no InputSizeCheck layer), so its tile geometry is unknown")
    _, height, width, channels = model.input_shape
    static = height if height is not None and height == width else None
    return checks[0].depth, checks[0].upsampling, channels, static


def _filters(model):
    return model.get_layer("down0_conv1").filters


def tile_for(model, image_shape, batch_size=1, tile_size=None):
    """The tile :func:`predict_tiled` uses for ``model`` and an image of ``image_shape``:
    ``tile_size`` if given, the model's fixed size, else
    :func:`unet_tf.memory.inference_tile_size` (the one policy, :class:`unet_tf.UNet`'s too)."""
    depth, upsampling, channels, static = model_geometry(model)
    if tile_size is not None:
        if static is not None and tile_size != static:
            raise ValueError(f"this model takes {static}x{static} tiles only, got "
                             f"tile_size={tile_size}")
        return tile_size
    return static or inference_tile_size(image_shape, depth, upsampling, _filters(model),
                                         channels, model.output_shape[-1], batch_size)


def tile_stride(tile_size, depth=5, upsampling="transpose"):
    """Distance between output windows: the output size rounded down to the pooling period."""
    period = size_rule(depth, upsampling)[1]
    out = output_size(tile_size, depth, upsampling)
    if out < period:
        smallest = input_size_for_output(period, depth, upsampling)
        raise ValueError(f"tile {tile_size} gives a {out}-pixel output, smaller than the pooling "
                         f"period {period} of depth {depth}, so tiles cannot line up exactly; "
                         f"use a tile of {smallest} or larger")
    return out - out % period


def forward(model, output="logits"):
    """The model's inference pass, with softmax/argmax for ``output``, as one compiled function.

    Faster than calling the Keras model eagerly op by op; traced once per model and output,
    for any batch and tile size (so images of other sizes, and a last smaller batch, reuse the
    trace instead of retracing), and cached.
    """
    functions = _FORWARD.setdefault(model, {})
    if output not in functions:
        ref = weakref.ref(model)  # a strong reference here would keep the model alive forever
        convert = {"logits": tf.identity, "probabilities": tf.nn.softmax,
                   "labels": lambda logits: tf.argmax(logits, axis=-1, output_type=tf.int32)}
        spec = tf.TensorSpec([None, None, None, model.input_shape[-1]], tf.float32)
        functions[output] = tf.function(
            lambda x: convert[output](ref()(x, training=False)), input_signature=[spec])
    return functions[output]


_FORWARD = weakref.WeakKeyDictionary()


def tile_grid(image_shape, tile_size, depth=5, upsampling="transpose"):
    """``(stride, corners)``: the output windows of a ``YX[C]`` image (see
    :func:`unet_tf.overlap_tile.window_grid`); a tile too small to line up is refused by name."""
    height, width = image_shape[:2]
    out = output_size(tile_size, depth, upsampling)
    if max(height, width) > out:
        tile_stride(tile_size, depth, upsampling)  # the error that names a tile that works
    return overlap_tile.window_grid(height, width, out, size_rule(depth, upsampling)[1])


def predict_tiled(model, image, tile_size=None, batch_size=BATCH_SIZE, output="probabilities",
                  progress=False, normalization=NORMALIZATION):
    """Predict a whole ``YX``/``YXC`` image of any size, tile by tile.

    Args:
        model: a U-Net from :func:`build_unet` (logits output), dynamic or fixed tile size.
        image: uint8/uint16/float ``YX`` or ``YXC``; normalised like in training, over the whole
            image (``normalization`` from the model folder's config; ``None`` if already done).
        tile_size: input tile (valid size). Default: the model's fixed size, else the largest
            tile that fits the memory budget (see :func:`unet_tf.memory.inference_tile_size`).
        batch_size: tiles per forward pass (does not change the result).
        output: ``"probabilities"`` (softmax, ``(H, W, K)`` float32), ``"logits"`` or
            ``"labels"`` (argmax, ``(H, W)`` int32).
        progress: show a ``keras.utils.Progbar``; or pass one (counting tiles, see
            :func:`tile_count`) to share a single bar across the frames of a stack.

    Returns:
        ``(H, W, K)`` float32 for ``"probabilities"``/``"logits"``, ``(H, W)`` int32 for
        ``"labels"``. Tiles are cut lazily, so memory holds the output and one batch of tiles,
        not the padded image.

    Raises:
        ValueError, TypeError: an invalid image, tile size, output or channel count.

    Example:
        >>> model, config = load_model_folder("my-model")                  # doctest: +SKIP
        >>> p = predict_tiled(model, image, normalization=config.normalization)  # doctest: +SKIP
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    image = check_image(image)
    depth, upsampling, channels, static = model_geometry(model)
    if image.shape[2] != channels:
        raise ValueError(f"image has {image.shape[2]} channels, the model expects {channels}")
    tile_size = tile_for(model, image.shape, batch_size, tile_size)
    corners = tile_grid(image.shape, tile_size, depth, upsampling)[1]
    check_fits(tile_size, min(batch_size, len(corners)), False, depth, _filters(model), upsampling,
               channels, model.output_shape[-1])
    return overlap_tile.predict_image(
        image, forward(model, output), tile_size, output_size(tile_size, depth, upsampling),
        size_rule(depth, upsampling)[1], normalization, batch_size,
        on_batch=tile_progress(progress, len(corners)))


def tile_progress(progress, tiles):
    """The ``on_batch`` callback of a prediction's ``progress`` argument: the given
    ``keras.utils.Progbar``, a new one over ``tiles`` tiles for ``True``, else ``None``."""
    bar = progress if isinstance(progress, keras.utils.Progbar) else (
        keras.utils.Progbar(tiles, unit_name="tile") if progress else None)
    return bar.add if bar else None


def tile_count(image_shape, tile_size, depth=5, upsampling="transpose"):
    """How many tiles :func:`predict_tiled` runs for a ``YX[C]`` image of ``image_shape``."""
    return len(tile_grid(image_shape, tile_size, depth, upsampling)[1])
