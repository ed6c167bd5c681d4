"""TFLite export: one fixed tile, batch 1, logits out; float32, fp16 or full-integer int8.

    export/model_float32.tflite   with model_float32.json beside it
    export/model_fp16.tflite      fp16 weights, float32 compute
    export/model_int8.tflite      int8 weights and activations, int8 input/output

The JSON sidecar holds what a runtime needs to cut and stitch tiles exactly like
:func:`unet_tf.tiling.predict_tiled` (tile and output size, pooling period, normalisation,
quantisation, classes) and the SHA-256 of the ``.tflite`` it describes. The repository's
``export/edge_predict.py`` is such a runtime; both use :mod:`unet_tf.overlap_tile`.

A 3-D net exports as float32 or fp16 with a ``(1, Z, Y, X, C)`` tile: LiteRT runs its
``CONV_3D``, ``CONV_3D_TRANSPOSE``, slices and concatenations natively; its max-pools, which
LiteRT lacks, become 2-D ones (:class:`unet_tf.layers.PlanarMaxPool3D`, equal results).
``CONV_3D`` has no int8 kernel (the converter keeps it float between QUANTIZE/DEQUANTIZE), so
there is no full-integer 3-D net: int8 and the Edge TPU refuse one.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..backend import keras, tf
from .. import overlap_tile
from ..version import __version__
from ..images import check_image
from ..io import list_images, read_frames, write_atomically
from ..layers import PlanarMaxPool3D
from ..model import build_unet, build_unet_3d
from ..model_folder import load_model_folder
from ..sizes import check_input_size, output_size, size_rule
from ..memory import DEVICE_MEMORY, inference_tile_size, volume_tile_shape
from ..tiling import tile_stride
from ..volume_sizes import axis_periods, check_volume_shape, volume_output_shape
from .equalize import equalize_channels
from .common import (CALIBRATION_CLIPS, CALIBRATION_TILES, CHECK_TILES, NOT_FOR_VOLUMES,
                     export_dir, export_target)

KINDS = {"tflite": "float32", "tflite-fp16": "fp16", "tflite-int8": "int8"}
# A TFLite model has one fixed tile. Devices have little memory, so the default is the tile
# memory.inference_tile_size gives a 1024^2 frame within memory.DEVICE_MEMORY.
DEVICE_FRAME = (1024, 1024)
DEVICE_VOLUME = (128, 512, 512)   # ZYX: a 3-D net's default tile starts from this stack


def device_tile_size(config, memory=DEVICE_MEMORY):
    """``(tile, why)``: the default TFLite tile of a model folder (a ``(Z, Y, X)`` tuple for a
    3-D net), and the reason (sidecar)."""
    a = config.architecture
    if a.is_volume:
        tile = volume_tile_shape(DEVICE_VOLUME, a.plan, a.filters, a.channels, a.num_classes,
                                 1, memory)
        frame = "x".join(map(str, DEVICE_VOLUME))
    else:
        tile = inference_tile_size(DEVICE_FRAME, a.depth, a.upsampling, a.filters,
                                   a.channels, a.num_classes, 1, memory)
        frame = f"{DEVICE_FRAME[0]}x{DEVICE_FRAME[1]}"
    return tile, (f"largest tile whose activations fit {memory // 2 ** 20} MiB and no "
                  f"larger than a {frame} {'stack' if a.is_volume else 'frame'} needs")


def check_tile(config, tile_size):
    """The tile as the sidecar stores it (an int, or ``(Z, Y, X)`` for a 3-D net), refused if
    the net cannot take it or its tiles could not line up exactly."""
    a = config.architecture
    if not a.is_volume:
        check_input_size(tile_size, a.depth, a.upsampling)
        tile_stride(tile_size, a.depth, a.upsampling)
        return tile_size
    if isinstance(tile_size, int) or len(tile_size) != 3:
        raise ValueError(f"a 3-D net's tile is Z,Y,X (three sizes), got {tile_size!r}")
    tile = tuple(int(t) for t in tile_size)
    check_volume_shape(tile, a.plan)
    output = volume_output_shape(tile, a.plan)
    if any(o < p for o, p in zip(output, axis_periods(a.plan))):
        raise ValueError(f"tile {'x'.join(map(str, tile))} gives an output of "
                         f"{'x'.join(map(str, output))}, smaller than the pooling periods "
                         f"{'x'.join(map(str, axis_periods(a.plan)))}: tiles could not line up; "
                         "use a larger tile")
    return tile


def tile_geometry(config, tile):
    """The sidecar's tile fields: ``tile_size``, ``output_size``, ``pooling_period`` (2-D), or
    ``tile_shape``, ``output_shape``, ``pooling_periods`` (``ZYX`` lists) for a 3-D net."""
    a = config.architecture
    if a.is_volume:
        return {"tile_shape": list(tile), "output_shape": list(volume_output_shape(tile, a.plan)),
                "pooling_periods": list(axis_periods(a.plan)), "axes": "zyx",
                "voxel_size": config.voxel_size}
    return {"tile_size": tile, "output_size": output_size(tile, a.depth, a.upsampling),
            "pooling_period": size_rule(a.depth, a.upsampling)[1], "axes": "yx"}


def tflite_path(model_dir, kind):
    """Where the ``kind`` (``"float32"``, ``"fp16"``, ``"int8"``) export of a folder goes."""
    return export_dir(model_dir) / f"model_{kind}.tflite"


def fixed_size_model(model, config, tile_size):
    """The same weights in a net with a static ``(1, T, T, C)`` input (a 3-D net:
    ``(1, Z, Y, X, C)``, its max-pools planar): no shape ops, no Assert."""
    a = config.architecture
    if a.is_volume:
        fixed = build_unet_3d((*tile_size, a.channels), a.num_classes, a.plan, a.filters,
                              a.dropout, name=model.name)
        fixed = keras.models.clone_model(fixed, clone_function=_planar_pools)
    else:
        fixed = build_unet((tile_size, tile_size, a.channels), a.num_classes, a.depth,
                           a.filters, a.dropout, a.upsampling, name=model.name)
    fixed.set_weights(model.get_weights())
    return fixed


def _planar_pools(layer):
    if isinstance(layer, keras.layers.MaxPooling3D):
        return PlanarMaxPool3D(layer.pool_size, name=layer.name)
    return layer.__class__.from_config(layer.get_config())


def calibration_tiles(images, config, tile_size, limit=CALIBRATION_TILES):
    """Up to ``limit`` normalised ``(1, T, T, C)`` tiles of ``images`` (``YX``/``YXC``), cut
    on the prediction grid (int8 calibration sees what the net will see) and spread evenly over
    all images and positions, not the first image's top rows. Where the grid holds fewer than
    ``limit`` windows (few images, large tiles: one 384^2 image gave one 604 tile), the grid
    shifted by halves, then quarters of a window adds more."""
    a = config.architecture
    out = output_size(tile_size, a.depth, a.upsampling)
    period = size_rule(a.depth, a.upsampling)[1]
    margin = (tile_size - out) // 2
    images = [check_image(image, f"calibration image {i}") for i, image in enumerate(images)]
    grids = [overlap_tile.window_grid(*image.shape[:2], out, period)[1] for image in images]
    for parts in (1, 2, 4):
        shifts = sorted({out * k // parts // period * period for k in range(parts)})
        windows = [(i, top + dy, left + dx) for i, (image, grid) in enumerate(zip(images, grids))
                   for top, left in grid for dy in shifts for dx in shifts
                   if top + dy < image.shape[0] and left + dx < image.shape[1]]
        if len(windows) >= limit:
            break
    chosen = np.unique(np.linspace(0, len(windows) - 1, min(limit, len(windows))).round())
    ranges = {}
    tiles = []
    for i, top, left in (windows[int(k)] for k in chosen):
        if i not in ranges:
            ranges[i] = overlap_tile.normalization_range(images[i], config.normalization)
        tile = overlap_tile.crop_reflect(images[i], top - margin, left - margin, tile_size,
                                         tile_size)
        tiles.append(overlap_tile.apply_range(tile, *ranges[i]))
    return np.stack(tiles)[:, None]


def clipped_to_percentiles(tiles, percent):
    """``tiles`` clipped to their ``percent`` and ``100 - percent`` percentiles (float32)."""
    low, high = np.percentile(tiles, [percent, 100 - percent])
    return np.clip(tiles, low, high).astype(np.float32)


def label_agreement(reference, labels):
    """Pixels with the same label over pixels that either labels as an object (foreground
    IoU for two classes; background agreement, which is easy, does not count)."""
    objects = (reference > 0) | (labels > 0)
    return float(np.count_nonzero(objects & (reference == labels))
                 / max(1, np.count_nonzero(objects)))


def int8_model(fixed, tiles):
    """Full-integer int8 ``.tflite`` bytes of a fixed-size model calibrated on ``tiles``
    ``(N, 1, T, T, C)``, and how it was chosen: one conversion per
    :data:`~unet_tf.exporters.common.CALIBRATION_CLIPS` entry, and the one whose labels
    agree best with Keras' on the tiles is kept (ties: the first)."""
    reference = fixed.predict(tiles[:, 0], verbose=0, batch_size=1).argmax(-1)
    best, tried = None, {}
    for clip in CALIBRATION_CLIPS:
        calibration = tiles if clip is None else clipped_to_percentiles(tiles, clip)
        model_bytes = convert(fixed, "int8", calibration)
        score = label_agreement(reference, run_tflite(model_bytes, tiles).argmax(-1))
        tried["none" if clip is None else f"{clip:g} %"] = round(score, 5)
        if best is None or score > best[0]:
            best = score, clip, model_bytes
    _, clip, model_bytes = best
    return model_bytes, {"tiles": len(tiles), "clip_percent": clip,
                         "object_label_agreement": tried}


def convert(fixed, kind, representative=None):
    """The ``.tflite`` bytes of a fixed-size model (:func:`fixed_size_model`); ``kind`` is
    ``"float32"``, ``"fp16"`` or ``"int8"`` (which needs ``representative`` tiles as they are
    to be calibrated on, and runs on the net's equalised copy:
    :mod:`unet_tf.exporters.equalize`; :func:`int8_model` chooses the calibration)."""
    if kind == "int8":
        fixed = equalize_channels(fixed, representative)
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
    """Logits (float32) of a TFLite U-Net for normalised float tiles ``(N, T, T, C)`` (or
    ``(N, Z, Y, X, C)``),
    (de)quantising int8/uint8 input and output as the model's parameters say."""
    interpreter = overlap_tile.allocated_interpreter(model_content=model_bytes,
                                                     num_threads=threads)
    return overlap_tile.invoke_tiles(interpreter, tiles)


def _quantization(detail):
    scale, zero = detail["quantization"]
    return {"dtype": np.dtype(detail["dtype"]).name, "shape": [int(s) for s in detail["shape"]],
            "scale": float(scale), "zero_point": int(zero)}


def tflite_metadata(model_bytes, config, tile_size, kind, check, tile_choice="given",
                    calibration=None):
    """The JSON sidecar of a ``.tflite`` export: all a runtime needs, nothing TF-specific
    (and, for int8, how it was calibrated: :func:`int8_model`)."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=model_bytes)
    a = config.architecture
    return {
        "format": "unet-tf tflite", "format_version": 1, "unet_tf_version": __version__,
        "kind": kind, "tflite_sha256": hashlib.sha256(model_bytes).hexdigest(),
        **tile_geometry(config, tile_size), "tile_choice": tile_choice,
        "depth": a.depth, "upsampling": a.upsampling, "channels": a.channels,
        "num_classes": a.num_classes, "class_names": list(config.class_names),
        "normalization": config.normalization,
        "output": "logits",  # softmax/argmax run on the host (cheap, and not int8-friendly)
        "postprocessing": config.postprocessing_settings,  # export/instances.py applies it
        "input_tensor": _quantization(interpreter.get_input_details()[0]),
        "output_tensor": _quantization(interpreter.get_output_details()[0]),
        "check": check,
        **({"calibration": calibration} if calibration else {}),
    }


def agreement(model, model_bytes, tiles):
    """How an export compares with the Keras model on ``tiles`` ``(N, 1, *tile, C)``: max
    |logit diff| and the fraction of pixels with the same argmax."""
    reference = model.predict(tiles[:, 0], verbose=0, batch_size=1)
    logits = run_tflite(model_bytes, tiles)
    return {"tiles": len(tiles),
            "max_abs_logit_diff": float(np.abs(logits - reference).max()),
            "label_agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1)))}


def calibration_images_for(config, calibration_images):
    """Images for int8 calibration: those given (a folder or a list of arrays), or the
    training images folder recorded in ``config.json``."""
    if calibration_images is None:
        folder = config.training.images
        if not folder or not Path(folder).is_dir():
            raise ValueError("int8 export needs calibration images like the training data: pass "
                             "--calibration-images DIR / calibration_images=... (the training "
                             f"images folder {folder!r} is not available)")
        calibration_images = folder
    if isinstance(calibration_images, (str, os.PathLike)):
        return [frame for path in list_images(calibration_images, "calibration")
                for frame in read_frames(path)]
    return list(calibration_images)


def export(model_dir, kind="float32", tile_size=None, calibration_images=None,
           overwrite=False, device_memory=DEVICE_MEMORY):
    """Write ``MODEL_DIR/export/model_<kind>.tflite`` and its ``.json`` sidecar.

    Args:
        model_dir: a model folder.
        kind: ``"float32"``, ``"fp16"`` or ``"int8"`` (2-D nets only).
        tile_size: the tile (a valid size; ``(Z, Y, X)`` for a 3-D net). Default:
            :func:`device_tile_size`.
        calibration_images: int8 only: a folder or a list of ``YX``/``YXC`` arrays like the
            training data. Default: the training images folder recorded in ``config.json``.
        overwrite: replace an earlier export of the same kind.
        device_memory: bytes of activations the default tile may take.

    Returns:
        The path of the ``.tflite`` file.
    """
    config, target = export_target(model_dir, tflite_path(model_dir, kind).name, overwrite)
    a = config.architecture
    if kind == "int8" and a.is_volume:
        raise ValueError(f"{model_dir} is a 3-D net: {NOT_FOR_VOLUMES['tflite-int8']}")
    tile_choice = "given"
    if tile_size is None:
        tile_size, tile_choice = device_tile_size(config, device_memory)
    tile_size = check_tile(config, tile_size)
    sidecar = target.with_suffix(".json")
    calibration = calibration_images_for(config, calibration_images) if kind == "int8" else None
    model, _ = load_model_folder(model_dir)
    tiles = calibration_tiles(calibration, config, tile_size) if calibration else None
    fixed = fixed_size_model(model, config, tile_size)
    if kind == "int8":
        model_bytes, how_calibrated = int8_model(fixed, tiles)
    else:
        model_bytes, how_calibrated = convert(fixed, kind), None
    if tiles is None:
        rng = np.random.default_rng(0)  # float exports: any input shows agreement
        tile = tile_size if a.is_volume else (tile_size, tile_size)
        tiles = rng.random((CHECK_TILES, 1, *tile, a.channels), np.float32)
    check = agreement(model, model_bytes, tiles[:CHECK_TILES])
    metadata = tflite_metadata(model_bytes, config, tile_size, kind, check, tile_choice,
                               how_calibrated)

    target.parent.mkdir(exist_ok=True)
    # Sidecar first: should the second rename never happen, the sidecar's SHA-256 no longer
    # matches the .tflite and runtimes refuse the pair instead of mis-reading it.
    write_atomically(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(metadata, indent=2)))
    write_atomically(target, lambda tmp: Path(tmp).write_bytes(model_bytes))
    return target
