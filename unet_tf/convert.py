"""Export a model folder for serving and for devices: SavedModel, TFLite float32/fp16/int8.

Everything lands in ``MODEL_DIR/export/``, each artefact written to a temporary sibling and
renamed into place, so a failed or killed export leaves the previous one untouched::

    export/savedmodel/1/        TF Serving layout (model name/version); signatures below
    export/model_float32.tflite one tile, batch 1, logits; with model_float32.json beside it
    export/model_fp16.tflite    fp16 weights, float32 compute
    export/model_int8.tflite    int8 weights and activations, int8 input/output

A TFLite model sees one tile of the fixed size it was exported with; its JSON sidecar holds what
a runtime needs to cut and stitch tiles exactly like :func:`unet_tf.tiling.predict_tiled`
(tile and output size, pooling period, normalisation, quantisation, classes) and the SHA-256 of
the ``.tflite`` it describes. ``export/edge_predict.py`` in the repository is such a runtime.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import __version__
from .images import NORMALIZATION
from .io import check_writable, write_atomically
from .model import build_unet, check_input_size, output_size, size_rule
from .tiling import tile_stride
from .training import load_model_folder, read_config

EXPORT_DIR = "export"
SAVEDMODEL_DIR = "savedmodel"
TFLITE_KINDS = {"tflite": "float32", "tflite-fp16": "fp16", "tflite-int8": "int8"}
FORMATS = ("savedmodel", *TFLITE_KINDS, "edgetpu", "onnx", "bioimageio")
ONNX_FILE = "model.onnx"
BIOIMAGEIO_FILE = "bioimageio.zip"
ONNX_OPSET = 17  # what deepImageJ's ONNX runtime reads
CALIBRATION_TILES = 64   # representative tiles for int8 calibration
CHECK_TILES = 4          # tiles on which an export is compared with the Keras model


# --------------------------------------------------------------------------- atomic writes

def _replace_path(tmp, target):
    """Move the finished ``tmp`` (file or folder) to ``target``, replacing what was there."""
    target = Path(target)
    if target.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)  # a folder cannot be replaced in one rename
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


def _check_target(path, overwrite):
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use --overwrite / overwrite=True to replace it)")


# --------------------------------------------------------------------------- SavedModel

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
    architecture, norm = config["architecture"], config["normalization"]
    smallest, step, shrink = size_rule(architecture["depth"], architecture["upsampling"])
    channels = architecture["channels"]

    def padded_size(n):
        return smallest + tf.maximum(0, (n + shrink - smallest + step - 1) // step) * step

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32,
                                                name="image")])
    def segment(image):
        batch, height, width = tf.shape(image)[0], tf.shape(image)[1], tf.shape(image)[2]
        flat = tf.reshape(image, [batch, -1])
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
    channels = config["architecture"]["channels"]

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


# --------------------------------------------------------------------------- TFLite

def _fixed_size_model(model, config, tile_size):
    """The same weights in a net with a static ``(1, T, T, C)`` input: no shape ops, no Assert."""
    a = config["architecture"]
    fixed = build_unet((tile_size, tile_size, a["channels"]), a["num_classes"], a["depth"],
                       a["filters"], a["dropout"], a["upsampling"], name=model.name)
    fixed.set_weights(model.get_weights())
    return fixed


def calibration_tiles(images, masks, config, tile_size, limit=CALIBRATION_TILES):
    """Up to ``limit`` normalised ``(1, T, T, C)`` tiles covering ``images``, as validation sees
    them (``make_dataset(validation=True)``): int8 calibration sees what the net will see."""
    from .data import make_dataset
    a = config["architecture"]
    if masks is None:  # labels are not used for calibration; any mask of the right shape does
        masks = [np.zeros(np.shape(image)[:2], np.int32) for image in images]
    dataset = make_dataset(images, masks, tile_size=tile_size, depth=a["depth"],
                           upsampling=a["upsampling"], validation=True, weight_map=False,
                           num_classes=a["num_classes"], normalization=config["normalization"])
    tiles = [x.numpy() for x, _, _ in dataset.unbatch().take(limit)]
    return np.stack(tiles)[:, None]


def _tflite_bytes(fixed, kind, representative):
    with tempfile.TemporaryDirectory() as tmp:
        # Via a SavedModel: converting the live function would keep READ_VARIABLE ops.
        archive = keras.export.ExportArchive()
        archive.track(fixed)
        archive.add_endpoint("serving_default", tf.function(
            lambda image: fixed(image, training=False),
            input_signature=[tf.TensorSpec([1, *fixed.input_shape[1:]], tf.float32, "image")]))
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if kind == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif kind == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([tile] for tile in representative)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return converter.convert()


def run_tflite(model_bytes, tiles, threads=2):
    """Logits (float32) of a TFLite U-Net for normalised float tiles ``(N, T, T, C)``,
    (de)quantising int8 input and output as the model's parameters say."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=model_bytes, num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for tile in tiles:
        x = np.asarray(tile, np.float32).reshape(inp["shape"])
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        results.append(y[0])
    return np.stack(results)


def _quantization(detail):
    scale, zero = detail["quantization"]
    return {"dtype": np.dtype(detail["dtype"]).name, "shape": [int(s) for s in detail["shape"]],
            "scale": float(scale), "zero_point": int(zero)}


def tflite_metadata(model_bytes, config, tile_size, kind, check):
    """The JSON sidecar of a ``.tflite`` export: all a runtime needs, nothing TF-specific."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=model_bytes)
    a = config["architecture"]
    return {
        "format": "unet-tf tflite", "format_version": 1, "unet_tf_version": __version__,
        "kind": kind, "tflite_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "tile_size": tile_size, "output_size": output_size(tile_size, a["depth"], a["upsampling"]),
        "pooling_period": size_rule(a["depth"], a["upsampling"])[1],
        "depth": a["depth"], "upsampling": a["upsampling"], "channels": a["channels"],
        "num_classes": a["num_classes"], "class_names": config.get("class_names"),
        "normalization": config.get("normalization", NORMALIZATION),
        "output": "logits",  # softmax/argmax run on the host (cheap, and not int8-friendly)
        "input_tensor": _quantization(interpreter.get_input_details()[0]),
        "output_tensor": _quantization(interpreter.get_output_details()[0]),
        "check": check,
    }


def _agreement(model, model_bytes, tiles):
    """How the export compares with the Keras model on ``tiles``: max |logit diff| and the
    fraction of pixels with the same argmax."""
    reference = model.predict(tiles[:, 0], verbose=0, batch_size=1)
    logits = run_tflite(model_bytes, tiles)
    return {"tiles": len(tiles),
            "max_abs_logit_diff": float(np.abs(logits - reference).max()),
            "label_agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1)))}


# --------------------------------------------------------------------------- ONNX

def _onnx_modules():
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx
    except ImportError as err:
        raise ModuleNotFoundError(f"ONNX export needs the onnx extra: pip install 'unet-tf[onnx]' "
                          f"(tf2onnx, onnxruntime); {err}") from None
    return tf2onnx


def export_onnx(model, config, path):
    """Write an ONNX model (opset 17): ``image`` float32 ``(N, H, W, C)`` normalised, any valid
    size -> ``probabilities`` float32 ``(N, H-shrink, W-shrink, K)`` (softmax in the graph)."""
    tf2onnx = _onnx_modules()
    spec = [tf.TensorSpec([None, None, None, config["architecture"]["channels"]], tf.float32,
                          name="image")]

    @tf.function(input_signature=spec)
    def probabilities(image):
        return {"probabilities": tf.nn.softmax(model(image, training=False))}

    tf2onnx.convert.from_function(probabilities, input_signature=spec, opset=ONNX_OPSET,
                                  output_path=str(path))


def run_onnx(path, tiles):
    """Probabilities from an exported ONNX model with onnxruntime (CPU)."""
    _onnx_modules()
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"image": np.asarray(tiles, np.float32)})[0]


# --------------------------------------------------------------------------- entry point

def _calibration_source(config, calibration_images):
    """Images (and masks, if known) for int8 calibration: given, or the training images."""
    from .io import list_images, load_pairs, read_frames
    if calibration_images is None:
        training = config.get("training", {})
        folder = training.get("images")
        if not folder or not Path(folder).is_dir():
            raise ValueError("int8 export needs calibration images like the training data: pass "
                             "--calibration-images DIR / calibration_images=... (the training "
                             f"images folder {folder!r} is not available)")
        if training.get("masks") and Path(training["masks"]).is_dir():
            images, masks, _ = load_pairs(folder, training["masks"])
            return images, masks
        calibration_images = folder
    if isinstance(calibration_images, (str, os.PathLike)):
        calibration_images = [frame for path in list_images(calibration_images, "calibration")
                              for frame in read_frames(path)]
    return list(calibration_images), None


def export_model(model_dir, format="savedmodel", tile_size=None, calibration_images=None,
                 overwrite=False):
    """Export a model folder; returns the written path (folder or ``.tflite``).

    Args:
        model_dir: a folder written by :func:`unet_tf.train`.
        format: ``"savedmodel"``, ``"tflite"`` (float32), ``"tflite-fp16"``, ``"tflite-int8"``,
            ``"onnx"``, ``"bioimageio"`` (``"edgetpu"``: see :func:`export_edgetpu`).
        tile_size: TFLite tile (a valid size; default the training tile). SavedModels take any.
        calibration_images: int8 only: a folder or a list of ``YX``/``YXC`` arrays like the
            training data. Default: the training images folder recorded in ``config.json``.
        overwrite: replace an earlier export of the same format.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "edgetpu":
        return export_edgetpu(model_dir, tile_size, calibration_images, overwrite).model
    config = read_config(model_dir)            # cheap checks first: the model loads last
    export_dir = Path(model_dir) / EXPORT_DIR
    check_writable(export_dir, "export folder")
    if format in ("onnx", "bioimageio"):
        from .bioimageio import export_bioimageio, _modules as bioimageio_modules
        target = export_dir / (ONNX_FILE if format == "onnx" else BIOIMAGEIO_FILE)
        _check_target(target, overwrite)
        _onnx_modules()
        if format == "bioimageio":
            bioimageio_modules()
        model, _ = load_model_folder(model_dir)
        export_dir.mkdir(exist_ok=True)
        write = export_onnx if format == "onnx" else export_bioimageio
        write_atomically(target, lambda tmp: write(model, config, tmp))
        return target
    if format == "savedmodel":
        target = export_dir / SAVEDMODEL_DIR
        _check_target(target, overwrite)
        model, _ = load_model_folder(model_dir)
        export_dir.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SAVEDMODEL_DIR}.", dir=export_dir))
        try:
            export_savedmodel(model, config, tmp / "1")
            _replace_path(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    kind = TFLITE_KINDS[format]
    a = config["architecture"]
    tile_size = tile_size or config["tile_size"]
    check_input_size(tile_size, a["depth"], a["upsampling"])
    tile_stride(tile_size, a["depth"], a["upsampling"])  # refuses tiles that cannot line up
    target = export_dir / f"model_{kind}.tflite"
    sidecar = target.with_suffix(".json")
    _check_target(target, overwrite)
    calibration = _calibration_source(config, calibration_images) if kind == "int8" else None
    model, _ = load_model_folder(model_dir)
    tiles = calibration_tiles(*calibration, config, tile_size) if calibration else None
    model_bytes = _tflite_bytes(_fixed_size_model(model, config, tile_size), kind, tiles)
    if tiles is None:
        rng = np.random.default_rng(0)  # float exports: any input shows agreement
        tiles = rng.random((CHECK_TILES, 1, tile_size, tile_size, a["channels"]), np.float32)
    check = _agreement(model, model_bytes, tiles[:CHECK_TILES])
    metadata = tflite_metadata(model_bytes, config, tile_size, kind, check)

    export_dir.mkdir(exist_ok=True)
    # Sidecar first: should the second rename never happen, the sidecar's SHA-256 no longer
    # matches the .tflite and runtimes refuse the pair instead of mis-reading it.
    write_atomically(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(metadata, indent=2)))
    write_atomically(target, lambda tmp: Path(tmp).write_bytes(model_bytes))
    return target


@dataclasses.dataclass
class EdgeTPUExport:
    model: Path        # the full-integer model that was checked
    report: object     # unet_tf.edgetpu.EdgeTPUReport
    compiled: Path | None = None   # NAME_edgetpu.tflite, when edgetpu_compiler is on PATH
    compiler_log: str | None = None


def export_edgetpu(model_dir, tile_size=None, calibration_images=None, overwrite=False):
    """The int8 TFLite export, checked op by op against the Edge TPU's requirements and,
    when ``edgetpu_compiler`` is on PATH, compiled (``export/model_int8_edgetpu.tflite``).

    An existing int8 export of the same tile size is checked as it is unless ``overwrite``.
    """
    from .edgetpu import check_tflite, compile_model
    target = Path(model_dir) / EXPORT_DIR / "model_int8.tflite"
    sidecar = target.with_suffix(".json")
    if target.exists() and sidecar.exists() and not overwrite:
        exported = json.loads(sidecar.read_text())["tile_size"]
        if tile_size not in (None, exported):
            raise FileExistsError(f"{target} was exported with tile {exported}, not {tile_size} "
                                  "(use --overwrite / overwrite=True to export it again)")
    else:
        export_model(model_dir, "tflite-int8", tile_size, calibration_images, overwrite)
    report = check_tflite(target)
    compiled = compile_model(target, target.parent)
    return EdgeTPUExport(target, report, *(compiled or (None, None)))
