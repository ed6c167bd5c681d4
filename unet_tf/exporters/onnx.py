"""ONNX export (opset 17, through tf2onnx): ``export/model.onnx``, for onnxruntime and
deepImageJ. Needs the ``onnx`` extra."""

import numpy as np

from ..backend import tf
from ..errors import MissingExtra
from ..io import write_atomically
from ..model_folder import load_model_folder
from .common import ONNX_OPSET, export_target
from .savedmodel import image_spec

ONNX_FILE = "model.onnx"


def onnx_modules():
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx
    except ImportError as err:
        raise MissingExtra(f"ONNX export needs the onnx extra: pip install 'unet-tf[onnx]' "
                          f"(tf2onnx, onnxruntime); {err}") from None
    return tf2onnx


def export_onnx(model, config, path):
    """Write an ONNX model (opset 17): ``image`` float32 ``(N, H, W, C)`` normalised, any valid
    size -> ``probabilities`` float32 ``(N, H-shrink, W-shrink, K)`` (softmax in the graph);
    a 3-D net: ``(N, Z, Y, X, C)`` -> ``(N, Z', Y', X', K)``."""
    tf2onnx = onnx_modules()
    spec = [image_spec(config.architecture)]

    @tf.function(input_signature=spec)
    def probabilities(image):
        return {"probabilities": tf.nn.softmax(model(image, training=False))}

    tf2onnx.convert.from_function(probabilities, input_signature=spec, opset=ONNX_OPSET,
                                  output_path=str(path))


def run_onnx(path, tiles):
    """Probabilities from an exported ONNX model with onnxruntime (CPU)."""
    onnx_modules()
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"image": np.asarray(tiles, np.float32)})[0]


def export(model_dir, overwrite=False):
    """Write ``MODEL_DIR/export/model.onnx``; returns its path."""
    config, target = export_target(model_dir, ONNX_FILE, overwrite)
    onnx_modules()
    model, _ = load_model_folder(model_dir)
    target.parent.mkdir(exist_ok=True)
    write_atomically(target, lambda tmp: export_onnx(model, config, tmp))
    return target
