"""Overlap-tile prediction in plain numpy, for runtimes without TensorFlow.

The same geometry and normalisation as ``unet_tf.tiling.predict_tiled`` (tests compare the two),
rewritten here so that this folder can be copied onto a device on its own. The numbers it needs
come from the JSON sidecar that ``unet-tf export`` writes next to each ``.tflite``.
"""

import numpy as np


def normalization_range(image, normalization):
    """``(lo, hi)``: the intensities that map to 0 and 1 (percentiles over all pixels)."""
    if normalization is None:
        return 0.0, 1.0
    if normalization.get("method") != "percentile":
        raise ValueError(f"unknown normalization method {normalization.get('method')!r}")
    lo, hi = np.percentile(image, (normalization["low"], normalization["high"]))
    return float(lo), float(hi)


def apply_range(image, lo, hi):
    scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(0.0)
    return (np.asarray(image).astype(np.float32) - np.float32(lo)) * scale


def reflect_index(index, size):
    """Indices mirrored about the border pixels (reflect-101), periodic for any padding."""
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
    return array[rows[:, None], cols[None, :]]


def tile_grid(height, width, output_size, period):
    """``(stride, corners)``: output windows start on multiples of the pooling period, so the
    tiles see the pooling grid of one whole-image pass and the result is seamless."""
    if max(height, width) <= output_size:
        return output_size, [(0, 0)]
    stride = output_size - output_size % period
    if stride == 0:
        raise ValueError(f"a {output_size}-pixel tile output is smaller than the pooling period "
                         f"{period}: export a larger tile")
    return stride, [(top, left) for top in range(0, height, stride)
                    for left in range(0, width, stride)]


def predict_tiled(image, predict_tiles, meta, batch_size=1):
    """Per-pixel network output for a whole ``YX``/``YXC`` image.

    Args:
        image: any numeric dtype; normalised here with ``meta["normalization"]``.
        predict_tiles: function of float32 tiles ``(B, T, T, C)`` -> ``(B, O, O, K)`` array.
        meta: the export's sidecar (``tile_size``, ``output_size``, ``pooling_period``,
            ``channels``, ``normalization``).
        batch_size: tiles per call (1 for a static batch-1 TFLite model).

    Returns ``(H, W, K)`` float32.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] != meta["channels"]:
        raise ValueError(f"expected a YX or YXC image with {meta['channels']} channel(s), "
                         f"got shape {image.shape}")
    tile, out = meta["tile_size"], meta["output_size"]
    margin = (tile - out) // 2
    height, width = image.shape[:2]
    stride, corners = tile_grid(height, width, out, meta["pooling_period"])
    lo, hi = normalization_range(image, meta["normalization"])
    result = None
    for start in range(0, len(corners), batch_size):
        batch = corners[start:start + batch_size]
        tiles = np.stack([apply_range(crop_reflect(image, top - margin, left - margin, tile, tile),
                                      lo, hi) for top, left in batch])
        predicted = np.asarray(predict_tiles(tiles), np.float32)
        if result is None:
            result = np.zeros((height, width, predicted.shape[-1]), np.float32)
        for (top, left), window in zip(batch, predicted):
            h, w = min(stride, height - top), min(stride, width - left)
            result[top:top + h, left:left + w] = window[:h, :w]
    return result


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
