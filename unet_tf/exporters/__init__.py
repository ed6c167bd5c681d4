"""Export a model folder for serving and for devices: one module per format, one dispatcher.

==============  ==========================================  ==============================
format          writes (in ``MODEL_DIR/export/``)           module
==============  ==========================================  ==============================
savedmodel      ``savedmodel/1/`` (TF Serving layout)       :mod:`.savedmodel`
tflite          ``model_float32.tflite`` + ``.json``        :mod:`.tflite`
tflite-fp16     ``model_fp16.tflite`` + ``.json``           :mod:`.tflite`
tflite-int8     ``model_int8.tflite`` + ``.json``           :mod:`.tflite`
edgetpu         int8 + op check (+ ``edgetpu_compiler``)    :mod:`.edgetpu`
onnx            ``model.onnx`` (opset 17)                   :mod:`.onnx`
bioimageio      ``bioimageio.zip`` (spec 0.5)               :mod:`.bioimageio`
==============  ==========================================  ==============================

A 3-D net (``ZYX`` volumes) exports as savedmodel, tflite, tflite-fp16 and onnx with 5-D
input; int8 and the Edge TPU refuse it (no int8 3-D convolution in TFLite, none on the chip),
and so, for now, does bioimageio (:data:`NOT_FOR_VOLUMES` says why).

Every artefact is written to a temporary sibling and renamed into place, so a failed or killed
export leaves the previous one untouched.
"""

import importlib

from ..model_folder import read_config
from .common import NOT_FOR_VOLUMES

FORMATS = ("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "edgetpu", "onnx", "bioimageio")


def export_model(model_dir, format="savedmodel", tile_size=None, calibration_images=None,
                 overwrite=False):
    """Export a model folder; returns the written path (folder or file).

    Args:
        model_dir: a folder written by :func:`unet_tf.train`.
        format: one of :data:`FORMATS`.
        tile_size: TFLite/Edge TPU tile (a valid size, ``(Z, Y, X)`` for a 3-D net; default:
            the largest that fits a device's memory). The SavedModel and ONNX models take any
            valid size.
        calibration_images: int8/Edge TPU only: a folder or a list of ``YX``/``YXC`` arrays
            like the training data. Default: the training images folder in ``config.json``.
        overwrite: replace an earlier export of the same format.

    Returns:
        ``Path`` of the export (for ``"edgetpu"``: the checked int8 model; use
        :func:`unet_tf.exporters.edgetpu.export_edgetpu` for the op report).

    Raises:
        ValueError: unknown format, invalid tile, a model folder that cannot be read, a 3-D
            net and a format that cannot hold one (:data:`NOT_FOR_VOLUMES`).
        FileExistsError: an earlier export exists and ``overwrite`` is false.
        ModuleNotFoundError: the optional extra a format needs is not installed.

    Example:
        >>> export_model("my-model", "tflite-int8")  # doctest: +SKIP
        PosixPath('my-model/export/model_int8.tflite')
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if read_config(model_dir).is_volume and format in NOT_FOR_VOLUMES:
        raise ValueError(f"{model_dir} is a 3-D net, which cannot be exported as {format}: "
                         f"{NOT_FOR_VOLUMES[format]}")
    if format.startswith("tflite"):
        from . import tflite
        return tflite.export(model_dir, tflite.KINDS[format], tile_size, calibration_images,
                             overwrite)
    if format == "edgetpu":
        from .edgetpu import export_edgetpu
        return export_edgetpu(model_dir, tile_size, calibration_images, overwrite).model
    # savedmodel, onnx, bioimageio: any valid size, no calibration
    return importlib.import_module(f".{format}", __name__).export(model_dir, overwrite)
