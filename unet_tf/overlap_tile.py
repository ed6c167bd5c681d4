"""Overlap-tile prediction in plain numpy: normalisation, mirroring, the tile grid, int8 I/O.

The one source of truth for how an image is cut into tiles and put back together, used by
``unet_tf.tiling`` (Keras), the TFLite checks in ``unet_tf.exporters`` and the TensorFlow-free
deployment kit. It imports numpy only: ``export/overlap_tile.py`` in the repository is a byte
copy of this file (a test holds the two to each other), so the kit runs where unet-tf and
TensorFlow are not installed.

Geometry: a U-Net with valid convolutions maps a ``T`` tile to its centred ``O`` output window.
It is shift-equivariant only for shifts by its pooling period ``P = 2**(depth-1)``, so output
windows start on multiples of ``P`` (stride ``O - O % P``); the tiled result then equals one
forward pass over the whole mirror-padded image, exactly: no seams, no blending.
"""

import numpy as np


def percentiles(image, qs):
    """``np.percentile(image, qs)`` (linear interpolation); for 8/16-bit images from a
    histogram, exactly, without the sorted copy (8192^2 uint16 costs 512 KiB, not 128 MiB)."""
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16) or image.size < 2 ** 16:
        return np.percentile(image, qs)
    counts = np.zeros(2 ** (8 * image.itemsize), np.int64)
    flat = image.reshape(-1)
    for start in range(0, flat.size, 2 ** 22):  # bincount copies to int64: do it in chunks
        counts += np.bincount(flat[start:start + 2 ** 22], minlength=counts.size)
    return histogram_percentiles(counts, qs)


def histogram_percentiles(counts, qs):
    """``np.percentile`` (linear interpolation) of integer values ``0..len(counts)-1`` given
    how often each occurs: exact, and the histograms of an image's parts simply add up."""
    cumulative = np.cumsum(counts)
    size = int(cumulative[-1])
    values = []
    for q in qs:
        position = q / 100.0 * (size - 1)
        below = int(np.floor(position))
        lower = np.searchsorted(cumulative, below, side="right")
        upper = np.searchsorted(cumulative, min(below + 1, size - 1), side="right")
        values.append(lower + (position - below) * (upper - lower))
    return np.array(values)


def normalization_range(image, normalization):
    """``(lo, hi)``: the intensities mapped to 0 and 1 by a model folder's ``normalization``
    entry: method ``percentile``, this image's percentiles over all pixels and channels;
    ``dataset``, the stored ``range`` (the training set's percentiles); ``(0, 1)`` for ``None``."""
    if normalization is None:
        return 0.0, 1.0
    if normalization.get("method") == "dataset":
        lo, hi = normalization["range"]
        return float(lo), float(hi)
    if normalization.get("method") != "percentile":
        raise ValueError(f"unknown normalization method {normalization.get('method')!r}, "
                         "expected 'percentile' or 'dataset'")
    lo, hi = percentiles(image, (normalization["low"], normalization["high"]))
    return float(lo), float(hi)


def apply_range(image, lo, hi):
    """``(image - lo) / (hi - lo)`` as float32; a constant image (``hi == lo``) maps to zeros."""
    scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(0.0)
    return (np.asarray(image).astype(np.float32) - np.float32(lo)) * scale


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
    return crop_reflect_nd(array, (top, left), (height, width))


def window_grid(height, width, output_size, period):
    """``(stride, corners)``: top-left corners of the output windows covering an image, on a
    regular grid (the last ones overhang). One window that covers the image is exact whatever
    its size; a grid needs windows aligned to the pooling ``period``."""
    if max(height, width) <= output_size:
        return output_size, [(0, 0)]
    stride = output_size - output_size % period
    if stride == 0:
        raise ValueError(f"a {output_size}-pixel tile output is smaller than the pooling period "
                         f"{period}, so tiles cannot line up exactly: use a larger tile")
    return stride, [(top, left) for top in range(0, height, stride)
                    for left in range(0, width, stride)]


def as_yxc_with(image, channels):
    """``image`` as ``YXC`` with ``channels`` channels (a ``YX`` image gets one), or a
    ``ValueError`` that says what came."""
    image = np.asarray(image)
    image = image[..., None] if image.ndim == 2 else image
    if image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(f"expected a YX or YXC image with {channels} channel(s), "
                         f"got shape {image.shape}")
    return image


def predict_image(image, predict_tiles, tile_size, output_size, period, normalization,
                  batch_size=1, on_batch=None):
    """Network output for a whole ``YXC`` image, tile by tile.

    Args:
        image: ``YXC`` array, any numeric dtype; normalised here with ``normalization``.
        predict_tiles: function of float32 tiles ``(B, T, T, C)`` -> ``(B, O, O[, K])``.
        tile_size, output_size, period: ``T``, ``O`` and the pooling period ``P``.
        normalization: a model folder's ``normalization`` entry, or ``None`` (already done).
        batch_size: tiles per call.
        on_batch: called with the number of tiles after each call (progress bars).

    Returns ``(H, W[, K])`` in the dtype ``predict_tiles`` returns. Memory holds the output and
    one batch of tiles, never the padded image.
    """
    return predict_window(image, predict_tiles, tile_size, output_size, period,
                          normalization_range(image, normalization),
                          (0, 0, *image.shape[:2]), batch_size, on_batch)


def predict_window(image, predict_tiles, tile_size, output_size, period, value_range, window,
                   batch_size=1, on_batch=None):
    """Network output for ``window = (top, left, height, width)`` of a ``YXC`` image, whose
    values ``value_range = (lo, hi)`` map to 0 and 1.

    Context outside ``image`` is mirrored. The output windows start at ``(top, left)`` and
    step by a multiple of ``period``: the result is exact (equal to :func:`predict_image` of the
    whole image) when ``(top, left)`` lies on the pooling grid of the whole image, e.g. when
    ``image`` is a region already holding its mirrored context (chunked prediction).
    """
    top0, left0, height, width = window
    margin = (tile_size - output_size) // 2
    stride, corners = window_grid(height, width, output_size, period)
    lo, hi = value_range
    result = None
    for start in range(0, len(corners), batch_size):
        batch = corners[start:start + batch_size]
        tiles = np.stack([apply_range(crop_reflect(image, top0 + top - margin,
                                                   left0 + left - margin, tile_size, tile_size),
                                      lo, hi) for top, left in batch])
        predicted = np.asarray(predict_tiles(tiles))
        if result is None:
            result = np.zeros((height, width, *predicted.shape[3:]), predicted.dtype)
        for (top, left), out in zip(batch, predicted):
            h, w = min(stride, height - top), min(stride, width - left)
            result[top:top + h, left:left + w] = out[:h, :w]
        if on_batch:
            on_batch(len(batch))
    return result


def quantize(x, tensor):
    """Float input for a TFLite input ``tensor`` (an interpreter's detail dict): int8/uint8
    tensors get ``round(x / scale) + zero_point``, clipped to their range; floats pass."""
    dtype = np.dtype(tensor["dtype"])
    if dtype not in (np.int8, np.uint8):
        return np.asarray(x, dtype)
    scale, zero = tensor["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(x, np.float32) / scale) + zero, info.min,
                   info.max).astype(dtype)


def dequantize(y, tensor):
    """Float32 values of a TFLite output ``tensor``: ``(y - zero_point) * scale`` for
    int8/uint8, unchanged for floats."""
    if np.dtype(tensor["dtype"]) not in (np.int8, np.uint8):
        return np.asarray(y, np.float32)
    scale, zero = tensor["quantization"]
    return (np.asarray(y, np.float32) - zero) * np.float32(scale)


def allocated_interpreter(**options):
    """A LiteRT ``Interpreter(**options)`` with its tensors allocated: with the default XNNPACK
    delegate, or, where XNNPACK refuses to prepare the model (seen intermittently for some
    trained int8 edge nets: "failed to create XNNPACK runtime"), LiteRT's own kernels, which
    give the same results, slower."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    interpreter = Interpreter(**options)
    try:
        interpreter.allocate_tensors()
    except RuntimeError as err:
        if "XNNPACK" not in str(err) or options.get("experimental_delegates"):
            raise
        interpreter = Interpreter(**options, experimental_op_resolver_type=(
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
        interpreter.allocate_tensors()
    return interpreter


def invoke_tiles(interpreter, tiles):
    """Logits ``(N, O, O, K)`` float32 of an allocated TFLite ``interpreter`` for normalised
    float tiles ``(N, T, T, C)``, one invoke per tile, (de)quantising int8/uint8 tensors."""
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    logits = []
    for tile in tiles:
        interpreter.set_tensor(inp["index"], quantize(np.reshape(tile, inp["shape"]), inp))
        interpreter.invoke()
        logits.append(dequantize(interpreter.get_tensor(out["index"])[0], out))
    return np.stack(logits)


def softmax(logits):
    """Softmax over the last axis."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- volumes (ZYX)

def as_zyxc_with(volume, channels):
    """``volume`` as ``ZYXC`` with ``channels`` channels (a ``ZYX`` stack gets one), or a
    ``ValueError`` that says what came."""
    given = np.asarray(volume)
    volume = given[..., None] if given.ndim == 3 else given
    if volume.ndim != 4 or volume.shape[3] != channels:
        raise ValueError(f"expected a ZYX or ZYXC volume with {channels} channel(s) for this 3-D "
                         f"net, got shape {given.shape}")
    return volume


def crop_reflect_nd(array, starts, sizes):
    """``array[s0:s0+n0, s1:s1+n1, ...]`` (leading axes) with mirrored content outside it."""
    if all(s >= 0 and s + n <= m for s, n, m in zip(starts, sizes, array.shape)):
        return array[tuple(slice(s, s + n) for s, n in zip(starts, sizes))]  # a view, no gather
    index = [reflect_index(np.arange(s, s + n), m) for s, n, m in zip(starts, sizes, array.shape)]
    return array[np.ix_(*index)]


def window_grid_nd(shape, output_shape, periods):
    """``(strides, corners)`` of :func:`window_grid`, per axis: along an axis one window that
    covers it is exact whatever its size; more need a stride on the axis's pooling period."""
    strides = []
    for size, out, period in zip(shape, output_shape, periods):
        stride = out if size <= out else out - out % period
        if stride == 0:
            raise ValueError(f"a tile output of {out} along an axis is smaller than its pooling "
                             f"period {period}, so tiles cannot line up exactly: use a larger tile")
        strides.append(stride)
    corners = np.stack(np.meshgrid(*[np.arange(0, n, s) for n, s in zip(shape, strides)],
                                   indexing="ij"), axis=-1).reshape(-1, len(shape))
    return strides, [tuple(int(c) for c in corner) for corner in corners]


def predict_volume(volume, predict_tiles, tile_shape, output_shape, periods, value_range,
                   batch_size=1, on_batch=None, window=None):
    """Network output for a whole ``ZYXC`` volume, tile by tile, mirrored at its faces: the
    3-D overlap-tile strategy, equal to one pass of the valid network over the mirrored volume.

    ``predict_tiles`` maps float32 ``(B, *tile_shape, C)`` to ``(B, *output_shape[, K])``;
    ``periods`` are the per-axis pooling periods; ``value_range = (lo, hi)`` maps to 0 and 1.
    ``window = (starts, shape)``: the output of that box only (its tiles read the volume around
    it); with ``starts`` on the pooling grid it equals that box of the whole volume's output.
    Returns ``(Z, Y, X[, K])`` (the window's shape); memory holds it and one batch of tiles.
    """
    starts, shape = window or ((0, 0, 0), volume.shape[:3])
    margins = [(t - o) // 2 for t, o in zip(tile_shape, output_shape)]
    strides, corners = window_grid_nd(shape, output_shape, periods)
    result = None
    for start in range(0, len(corners), batch_size):
        batch = corners[start:start + batch_size]
        tiles = np.stack([apply_range(crop_reflect_nd(volume, [o + c - m for o, c, m in
                                                               zip(starts, corner, margins)],
                                                      tile_shape),
                                      *value_range) for corner in batch])
        predicted = np.asarray(predict_tiles(tiles))
        if result is None:
            result = np.zeros((*shape, *predicted.shape[4:]), predicted.dtype)
        for corner, out in zip(batch, predicted):
            extent = [min(s, n - c) for s, n, c in zip(strides, shape, corner)]
            result[tuple(slice(c, c + e) for c, e in zip(corner, extent))] = \
                out[tuple(slice(0, e) for e in extent)]
        if on_batch:
            on_batch(len(batch))
    return result
