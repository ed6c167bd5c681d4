"""SavedModel export for TF Serving: ``export/savedmodel/1/`` with two signatures.

``serving_default``: ``image`` float32 ``(B, T, T, C)`` normalised tiles of any valid size ``T``
-> ``probabilities`` ``(B, O, O, K)`` float32 and ``labels`` ``(B, O, O)`` int32.
``segment``: ``image`` float32 ``(B, H, W, C)`` raw images of any size -> the same outputs at
``(H, W)``, normalised and mirror-padded inside the graph, equal to ``predict_tiled``.

A 3-D net's signatures are the same with ``(B, Z, Y, X, C)`` input, any valid tile per axis
(``serving_default``) or any volume (``segment``, normalised over the whole volume as in
training).

``labels`` are class ids (the argmax). Instance labels need the folder's post-processing
(watershed split, size filter: ``postprocessing`` in ``config.json``), which runs on the client
on the probabilities: ``export/serving/rest_client.py`` does it with ``export/instances.py``.
"""

import shutil

from ..backend import keras, tf
from ..model_folder import load_model_folder
from ..sizes import size_rule
from ..volume_sizes import axis_rule, per_axis
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


def _axis_rules(architecture):
    """``(smallest, step, shrink)`` of each spatial axis (2 for a 2-D net, ZYX for a 3-D one)."""
    a = architecture
    if a.is_volume:
        return [axis_rule(p, k) for p, k in per_axis(a.plan)]
    return [size_rule(a.depth, a.upsampling)] * 2


def image_spec(architecture):
    """``image`` float32 ``(B, *spatial, C)``, every size free."""
    rank = 3 if architecture.is_volume else 2
    return tf.TensorSpec([None] * (1 + rank) + [architecture.channels], tf.float32, name="image")


def _segment_function(model, config):
    """Whole raw images (volumes, for a 3-D net) of any size -> labels/probabilities, exactly
    as ``predict_tiled`` (``predict_volume_tiled``).

    Normalises each image like training, mirror-pads it to a valid size (margin on every side,
    as the tiles see it) and runs one forward pass: with windows aligned to the pooling period
    this equals the tiled result. Memory grows with the image: for very large images tile on
    the client (``export/serving/rest_client.py`` does).
    """
    norm = config.normalization
    rules = _axis_rules(config.architecture)
    expand = (slice(None),) + (None,) * (len(rules) + 1)   # (B,) -> (B, 1, ..., 1)

    @tf.function(input_signature=[image_spec(config.architecture)])
    def segment(image):
        batch = tf.shape(image)[0]
        flat = tf.reshape(image, [batch, -1])
        if norm["method"] == "dataset":  # one stored range for every image
            lo = tf.fill([batch], tf.constant(norm["range"][0], flat.dtype))
            hi = tf.fill([batch], tf.constant(norm["range"][1], flat.dtype))
        else:
            lo = _percentile(flat, norm["low"])
            hi = _percentile(flat, norm["high"])
        scale = tf.where(hi > lo, 1.0 / tf.where(hi > lo, hi - lo, 1.0), 0.0)
        x = (image - tf.cast(lo, tf.float32)[expand]) * tf.cast(scale, tf.float32)[expand]
        sizes = [tf.shape(image)[axis] for axis in range(1, len(rules) + 1)]
        for axis, (size, (smallest, step, shrink)) in enumerate(zip(sizes, rules), 1):
            padded = smallest + tf.maximum(0, (size + shrink - smallest + step - 1) // step) * step
            x = tf.gather(x, _reflect(tf.range(padded) - shrink // 2, size), axis=axis)
        logits = model(x, training=False)[(slice(None),) + tuple(slice(0, n) for n in sizes)]
        return {"probabilities": tf.nn.softmax(logits),
                "labels": tf.argmax(logits, axis=-1, output_type=tf.int32)}
    return segment


def export_savedmodel(model, config, path):
    """Write a SavedModel with two signatures to ``path`` (a new folder).

    ``serving_default``: ``image`` float32 ``(B, T, T, C)`` normalised tiles of any valid size
    ``T`` -> ``probabilities`` ``(B, O, O, K)`` float32 and ``labels`` ``(B, O, O)`` int32.
    ``segment``: ``image`` float32 ``(B, H, W, C)`` raw images of any size -> the same outputs
    at ``(H, W)``, normalised and mirror-padded inside the graph. A 3-D net: ``(B, Z, Y, X, C)``.
    """
    @tf.function(input_signature=[image_spec(config.architecture)])
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
