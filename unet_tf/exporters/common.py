"""What every export format shares: where exports go, constants, and atomic replacement.

Each artefact lands in ``MODEL_DIR/export/``, written to a temporary sibling and renamed into
place, so a failed or killed export leaves the previous one untouched.
"""

import os
import shutil
import tempfile
from pathlib import Path

from ..io import apply_umask, check_writable
from ..model_folder import EXPORT_DIR, read_config

ONNX_OPSET = 17          # what deepImageJ's ONNX runtime reads
CALIBRATION_TILES = 64   # representative tiles for int8 calibration
# int8 calibration is tried on the tiles as they are and clipped to these percentiles (percent
# at each end), and the model that agrees best with Keras on them is kept. Clipping spends the
# input's 256 levels on the intensities that decide the labels (brighter pixels saturate):
# on held-out Fluo-HeLa frames it raised foreground IoU against Keras from 0.991 to 0.995 (the
# edge net 0.990 -> 0.994); on BBBC007, where it cost 0.001, the tiles chose no clipping.
CALIBRATION_CLIPS = (None, 0.1)
CHECK_TILES = 4          # tiles on which an export is compared with the Keras model
# Why a 3-D net cannot take a format (checked before any work).
NOT_FOR_VOLUMES = {
    "tflite-int8": "TFLite has no int8 3-D convolution (the converter keeps CONV_3D float between "
                   "QUANTIZE/DEQUANTIZE), so no full-integer 3-D net exists; use --format tflite "
                   "or tflite-fp16",
    "edgetpu": "the Edge TPU has no 3-D convolution (and TFLite no int8 one); run the tflite or "
               "tflite-fp16 export on the device's CPU instead",
}

__all__ = ["EXPORT_DIR", "ONNX_OPSET", "CALIBRATION_TILES", "CALIBRATION_CLIPS", "CHECK_TILES",
           "NOT_FOR_VOLUMES", "export_dir",
           "check_target", "export_target", "replace_path", "temporary_folder"]


def export_dir(model_dir):
    """``MODEL_DIR/export``."""
    return Path(model_dir) / EXPORT_DIR


def check_target(path, overwrite):
    """Refuse to replace an earlier export unless ``overwrite``."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use --overwrite / overwrite=True to replace it)")


def export_target(model_dir, name, overwrite):
    """``(config, target)`` of an export: the folder's
    :class:`~unet_tf.model_folder.ModelConfig` and ``MODEL_DIR/export/NAME``, refused before
    any work if the export folder is not writable or ``NAME`` exists (unless ``overwrite``).
    Cheap checks first: the model loads afterwards."""
    config = read_config(model_dir)
    folder = export_dir(model_dir)
    check_writable(folder, "export folder")
    target = folder / name
    check_target(target, overwrite)
    return config, target


def temporary_folder(target):
    """A new, empty hidden sibling folder of ``target``, with the permissions the umask gives."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    apply_umask(tmp)
    return tmp


def replace_path(tmp, target):
    """Move the finished ``tmp`` (file or folder) to ``target``, replacing what was there."""
    target = Path(target)
    if target.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)  # a folder cannot be replaced in one rename
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)
