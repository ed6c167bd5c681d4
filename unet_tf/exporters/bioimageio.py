"""A bioimage.io model package (spec 0.5) of a model folder: for Fiji/deepImageJ, ilastik,
QuPath and napari users.

The package holds the weights as ``keras_v3`` (a copy of the net without unet-tf's custom
layers, so plain Keras loads it) and, with the onnx extra, ``onnx`` (opset 17); test tensors
cut from the bundled sample; the valid-size rule as a parameterized size (``min + k*step``);
the output size as the input size minus the border the valid convolutions consume (the spec's
``size.offset`` for a halo the model crops itself: 92 px per side for the paper net);
preprocessing equal to training's normalisation (``scale_range`` for per-image percentiles,
``scale_linear`` for one dataset range); a cover, docs,
the U-Net citation and the license. Needs the ``bioimageio`` extra.
"""

import datetime
import os
import tempfile
from pathlib import Path

import numpy as np

from ..backend import keras
from ..errors import MissingExtra
from ..version import __version__
from ..images import normalize_with
from ..io import write_atomically, write_image
from ..layers import InputSizeCheck, NearestUpsample2x
from ..model_folder import load_model_folder
from ..instances import label_image
from ..postprocess import overlay
from ..samples import load_sample
from ..sizes import next_valid_input_size, size_rule
from .common import ONNX_OPSET, export_target
from .onnx import export_onnx, onnx_modules

BIOIMAGEIO_FILE = "bioimageio.zip"

UNET_PAPER = {"text": "Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical "
                      "Image Segmentation. MICCAI 2015", "doi": "10.1007/978-3-319-24574-4_28"}


def spec_module():
    # bioimageio.core sets KERAS_BACKEND process-wide (default torch) when it loads Keras
    # weights; these are TensorFlow weights, and our own subprocesses inherit the variable.
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec
    except ImportError as err:
        raise MissingExtra("bioimage.io export needs the bioimageio extra: "
                                  f"pip install 'unet-tf[bioimageio]'; {err}") from None
    return bioimageio.spec


def plain_keras_copy(model):
    """The same net and weights with only built-in Keras layers, softmax at the end: consumers
    load it without unet-tf (the size check becomes an identity, nearest x2 an UpSampling2D)."""
    def clone(layer):
        if isinstance(layer, InputSizeCheck):
            return keras.layers.Identity(name=layer.name)
        if isinstance(layer, NearestUpsample2x):
            return keras.layers.UpSampling2D(2, interpolation="nearest", name=layer.name)
        return layer.__class__.from_config(layer.get_config())
    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    probabilities = keras.layers.Softmax(dtype="float32", name="probabilities")(copy.output)
    return keras.Model(copy.input, probabilities, name=model.name)


def _test_tensors(model, config):
    """A raw crop of the bundled sample at a valid size, and the model's probabilities for it."""
    a = config.architecture
    size = next_valid_input_size(256, a.depth, a.upsampling)
    image = load_sample()[0]
    raw = np.resize(image, (size, size)) if size > min(image.shape) else image[:size, :size]
    raw = np.repeat(raw[None, :, :, None].astype(np.float32), a.channels, axis=-1)
    x = normalize_with(raw[0], config.normalization)[None]
    return raw, keras.activations.softmax(model(x, training=False)).numpy()


def _cover(raw, probabilities, path, config):
    labels = label_image(probabilities[0], config.postprocessing_settings)
    margin = (raw.shape[1] - labels.shape[0]) // 2  # the output covers the input's centre
    centre = raw[0, margin:margin + labels.shape[0], margin:margin + labels.shape[1], 0]
    write_image(path, overlay(centre, labels), overwrite=True)


def _normalization_text(norm):
    where = ("the training set's" if norm["method"] == "dataset" else "each image's")
    return (f"normalised by {where} {norm['low']} / {norm['high']} percentiles"
            + (f" (intensities {norm['range'][0]:g} / {norm['range'][1]:g})"
               if norm["method"] == "dataset" else ""))


def _preprocessing(norm):
    """The bioimage.io step equal to the folder's normalisation."""
    if norm["method"] == "dataset":
        lo, hi = norm["range"]
        return {"id": "scale_linear", "kwargs": {"axes": ["y", "x", "channel"],
                                                 "gain": 1.0 / (hi - lo), "offset": -lo / (hi - lo)}}
    return {"id": "scale_range", "kwargs": {"axes": ["y", "x", "channel"],
                                            "min_percentile": norm["low"],
                                            "max_percentile": norm["high"]}}


def export_bioimageio(model, config, path, onnx=True):
    """Write a bioimage.io model package (zip) to ``path``."""
    spec = spec_module()
    a = config.architecture
    smallest, step, shrink = size_rule(a.depth, a.upsampling)
    classes = list(config.class_names)
    norm = config.normalization
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw, probabilities = _test_tensors(model, config)
        np.save(tmp / "test_input.npy", raw)
        np.save(tmp / "test_output.npy", probabilities)
        _cover(raw, probabilities, tmp / "cover.png", config)
        plain_keras_copy(model).save(tmp / "model.keras")
        weights = {"keras_v3": {"source": "model.keras", "keras_version": keras.__version__,
                                "backend": ["tensorflow", _tf_version()]}}
        if onnx:
            export_onnx(model, config, tmp / "model.onnx")
            weights["onnx"] = {"source": "model.onnx", "opset_version": ONNX_OPSET,
                               "parent": "keras_v3"}
        (tmp / "README.md").write_text(_documentation(config, smallest, step, shrink))
        (tmp / "LICENSE").write_text("MIT License: weights trained with unet-tf; see the "
                                     "training data's own license for the data.\n")
        rdf = {
            "type": "model", "format_version": "0.5.4",
            "name": f"unet-tf U-Net {Path(config.training.out).name}",
            "description": (f"U-Net (depth {a.depth}, {a.filters} filters, "
                            f"{a.upsampling}) for {a.num_classes}-class segmentation, "
                            f"trained with unet-tf {config.versions.get('unet_tf') or __version__}"),
            "authors": [{"name": "unet-tf"}],
            "cite": [UNET_PAPER],
            "license": "MIT",
            "documentation": "README.md",
            "covers": ["cover.png"],
            "attachments": [{"source": "LICENSE"}],
            "tags": ["unet", "segmentation", "2d", "unet-tf", "tensorflow", "keras"],
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "inputs": [{
                "id": "raw", "description": "image; any size that fits min + k*step",
                "axes": [{"type": "batch"},
                         {"type": "space", "id": "y", "size": {"min": smallest, "step": step}},
                         {"type": "space", "id": "x", "size": {"min": smallest, "step": step}},
                         {"type": "channel", "channel_names": [f"c{i}" for i in range(a.channels)]}],
                "test_tensor": {"source": "test_input.npy"},
                "data": {"type": "float32"},
                "preprocessing": [_preprocessing(norm)],
            }],
            "outputs": [{
                "id": "probabilities", "description": "softmax class probabilities",
                "axes": [{"type": "batch"},
                         {"type": "space", "id": "y",
                          "size": {"tensor_id": "raw", "axis_id": "y", "offset": -shrink}},
                         {"type": "space", "id": "x",
                          "size": {"tensor_id": "raw", "axis_id": "x", "offset": -shrink}},
                         {"type": "channel", "channel_names": list(classes)}],
                "test_tensor": {"source": "test_output.npy"},
                "data": {"type": "float32"},
            }],
            "weights": weights,
        }
        description = spec.build_description(
            rdf, context=spec.ValidationContext(root=tmp, perform_io_checks=True))
        if not isinstance(description, spec.ModelDescr):
            raise RuntimeError(f"the bioimage.io description does not validate:\n"
                               f"{description.validation_summary.format()}")
        spec.save_bioimageio_package(description, output_path=Path(path))
    return Path(path)


def _tf_version():
    from ..backend import tf
    return tf.__version__


def _documentation(config, smallest, step, shrink):
    a = config.architecture
    return f"""# U-Net exported by unet-tf

U-Net (Ronneberger et al. 2015) with valid 3x3 convolutions: depth {a.depth},
{a.filters} filters, `{a.upsampling}` up-sampling, {a.num_classes} classes
({', '.join(config.class_names)}).

* Input: any size `{smallest} + k*{step}` per spatial axis; {_normalization_text(config.normalization)}
  (as in training).
* Output: class probabilities, {shrink} px smaller than the input ({shrink // 2} px per side,
  consumed by the valid convolutions). For seamless tiling, use tiles whose output size is a
  multiple of {step} and mirror-pad the image by {shrink // 2} px.
* Trained with unet-tf {config.versions.get('unet_tf') or __version__} on
  {config.data.get('images', '?')} image(s).

# Validation

The package's test input is a crop of the DSB2018 nuclei image bundled with unet-tf; its test
output is what the trained Keras model gives for it. Judge the model on your own data, e.g. with
`unet-tf evaluate` (foreground IoU, pixel and Rand error, F1 of matched objects).
"""


def export(model_dir, overwrite=False):
    """Write ``MODEL_DIR/export/bioimageio.zip``; returns its path."""
    config, target = export_target(model_dir, BIOIMAGEIO_FILE, overwrite)
    onnx_modules()
    spec_module()
    model, _ = load_model_folder(model_dir)
    target.parent.mkdir(exist_ok=True)
    write_atomically(target, lambda tmp: export_bioimageio(model, config, tmp))
    return target
