"""SavedModel export for TF Serving: ``export/savedmodel/1/`` with two signatures.

``serving_default``: ``image`` float32 ``(B, T, T, C)`` normalised tiles of any valid size ``T``
-> ``probabilities`` ``(B, O, O, K)`` float32 and ``labels`` ``(B, O, O)`` int32.
``segment``: ``image`` float32 ``(B, H, W, C)`` raw images of any size -> the same outputs at
``(H, W)``, normalised and mirror-padded inside the graph, equal to ``predict_tiled``.

``labels`` are class ids (the argmax). Instance labels need the folder's post-processing
(watershed split, size filter: ``postprocessing`` in ``config.json``), which runs on the client
on the probabilities: ``export/serving/rest_client.py`` does it with ``export/instances.py``.
"""

import shutil

from ..backend import keras, tf
from ..model_folder import load_model_folder
from ..sizes import size_rule
from .common import export_target, replace_path, temporary_folder

SAVEDMODEL_DIR = "savedmodel"


def _reflect(index, size):
    """:func:`unet_tf.images.reflect_index` in TensorFlow ops."""
    period = tf.maximum(2 * (size - 1), 1)
    index = tf.math.floormod(tf.abs(index), period)
    return tf.where(index >= size, period - index, index)


def _percentile(values, q):
    """``np.percentile(values, q, axis=-1)`` (linear interpolation) of a ``(B, N)`` tensor."""
    ordered = tf.sort(values, axis=-1)
    position = q / 100.0 * tf.cast(tf.shape(values)[-1] - 1, tf.float64)
    below = tf.cast(tf.floor(position), tf.int32)
    above = tf.minimum(below + 1, tf.shape(values)[-1] - 1)
    low = tf.cast(tf.gather(ordered, below, axis=-1), tf.float64)
    high = tf.cast(tf.gather(ordered, above, axis=-1), tf.float64)
    return low + (position - tf.floor(position)) * (high - low)


def _segment_function(model, config):
    """Whole raw images of any size -> labels/probabilities, exactly as ``predict_tiled``.

    Normalises each image like training, mirror-pads it to a valid size (margin on every side,
    as the tiles see it) and runs one forward pass: with windows aligned to the pooling period
    this equals the tiled result. Memory grows with the image: for very large images tile on
    the client (``export/serving/rest_client.py`` does).
    """
    architecture, norm = config.architecture, config.normalization
    smallest, step, shrink = size_rule(architecture.depth, architecture.upsampling)
    channels = architecture.channels

    def padded_size(n):
        return smallest + tf.maximum(0, (n + shrink - smallest + step - 1) // step) * step

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32,
                                                name="image")])
    def segment(image):
        batch, height, width = tf.shape(image)[0], tf.shape(image)[1], tf.shape(image)[2]
        flat = tf.reshape(image, [batch, -1])
        if norm["method"] == "dataset":  # one stored range for every image
            lo = tf.fill([batch], tf.constant(norm["range"][0], flat.dtype))
            hi = tf.fill([batch], tf.constant(norm["range"][1], flat.dtype))
        else:
            lo = _percentile(flat, norm["low"])
            hi = _percentile(flat, norm["high"])
        scale = tf.where(hi > lo, 1.0 / tf.where(hi > lo, hi - lo, 1.0), 0.0)
        x = (image - tf.cast(lo, tf.float32)[:, None, None, None]) * tf.cast(
            scale, tf.float32)[:, None, None, None]
        margin = shrink // 2
        rows = _reflect(tf.range(padded_size(height)) - margin, height)
        cols = _reflect(tf.range(padded_size(width)) - margin, width)
        x = tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)
        logits = model(x, training=False)[:, :height, :width]
        return {"probabilities": tf.nn.softmax(logits),
                "labels": tf.argmax(logits, axis=-1, output_type=tf.int32)}
    return segment


def export_savedmodel(model, config, path):
    """Write a SavedModel with two signatures to ``path`` (a new folder).

    ``serving_default``: ``image`` float32 ``(B, T, T, C)`` normalised tiles of any valid size
    ``T`` -> ``probabilities`` ``(B, O, O, K)`` float32 and ``labels`` ``(B, O, O)`` int32.
    ``segment``: ``image`` float32 ``(B, H, W, C)`` raw images of any size -> the same outputs
    at ``(H, W)``, normalised and mirror-padded inside the graph.
    """
    channels = config.architecture.channels

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32,
                                                name="image")])
    def serve(image):
        logits = model(image, training=False)
        return {"probabilities": tf.nn.softmax(logits),
                "labels": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)  # the first endpoint is TF Serving's default
    archive.add_endpoint("segment", _segment_function(model, config))
    archive.write_out(str(path), verbose=False)


def export(model_dir, overwrite=False):
    """Write ``MODEL_DIR/export/savedmodel/1/``; returns ``MODEL_DIR/export/savedmodel``."""
    config, target = export_target(model_dir, SAVEDMODEL_DIR, overwrite)
    model, _ = load_model_folder(model_dir)
    target.parent.mkdir(exist_ok=True)
    tmp = temporary_folder(target)
    try:
        export_savedmodel(model, config, tmp / "1")
        replace_path(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
