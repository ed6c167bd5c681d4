"""A bioimage.io model package (spec 0.5) of a model folder: for Fiji/deepImageJ, ilastik,
QuPath and napari users.

The package holds the weights as ``keras_v3`` (a copy of the net without unet-tf's custom
layers, so plain Keras loads it) and, with the onnx extra, ``onnx`` (opset 17); test tensors
cut from the bundled sample; the valid-size rule as a parameterized size (``min + k*step``);
the output size as the input size minus the border the valid convolutions consume (the spec's
``size.offset`` for a halo the model crops itself: 92 px per side for the paper net);
preprocessing equal to training's normalisation (``scale_range`` for per-image percentiles,
``scale_linear`` for one dataset range); a cover, docs,
the U-Net citation and the license. A 3-D net's package has ``z, y, x`` space axes, each with
its own rule (its per-axis pools and kernels), test tensors cut from the bundled volume, and the
3-D U-Net citation too. Needs the ``bioimageio`` extra.
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
from ..layers import InputSizeCheck, NearestUpsample2x, VolumeSizeCheck
from ..model_folder import load_model_folder
from ..instances import label_image
from ..postprocess import overlay
from ..samples import load_sample, load_sample_volume
from ..sizes import next_valid_input_size, size_rule
from ..volume_sizes import axis_rule, next_valid_volume_shape, per_axis, voxel_text
from .common import ONNX_OPSET, export_target
from .onnx import export_onnx, onnx_modules

BIOIMAGEIO_FILE = "bioimageio.zip"

UNET_PAPER = {"text": "Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical "
                      "Image Segmentation. MICCAI 2015", "doi": "10.1007/978-3-319-24574-4_28"}
UNET_3D_PAPER = {"text": "Cicek, Abdulkadir, Lienkamp, Brox, Ronneberger. 3D U-Net: Learning "
                         "Dense Volumetric Segmentation from Sparse Annotation. MICCAI 2016",
                 "doi": "10.1007/978-3-319-46723-8_49"}


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
        if isinstance(layer, (InputSizeCheck, VolumeSizeCheck)):
            return keras.layers.Identity(name=layer.name)
        if isinstance(layer, NearestUpsample2x):
            return keras.layers.UpSampling2D(2, interpolation="nearest", name=layer.name)
        return layer.__class__.from_config(layer.get_config())
    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    probabilities = keras.layers.Softmax(dtype="float32", name="probabilities")(copy.output)
    return keras.Model(copy.input, probabilities, name=model.name)


def axis_rules(config):
    """``[(axis id, smallest, step, shrink), ...]`` per space axis: valid input sizes are
    ``smallest + k*step``, the output ``shrink`` smaller."""
    a = config.architecture
    if a.is_volume:
        return [(name, *axis_rule(pools, kernels))
                for name, (pools, kernels) in zip("zyx", per_axis(a.plan))]
    return [(name, *size_rule(a.depth, a.upsampling)) for name in "yx"]


def _test_tensors(model, config):
    """A raw crop of the bundled sample (a 3-D net: of the bundled volume, mirrored where the
    smallest valid shape is larger) at a valid size, and the model's probabilities for it."""
    a = config.architecture
    if a.is_volume:
        volume = load_sample_volume()[0]
        shape = next_valid_volume_shape((min(volume.shape[0], 48), 96, 96), a.plan)
        raw = volume[tuple(slice(0, n) for n in shape)]
        raw = np.pad(raw, [(0, n - r) for n, r in zip(shape, raw.shape)], mode="reflect")
    else:
        size = next_valid_input_size(256, a.depth, a.upsampling)
        image = load_sample()[0]
        raw = np.resize(image, (size, size)) if size > min(image.shape) else image[:size, :size]
    raw = np.repeat(raw[None, ..., None].astype(np.float32), a.channels, axis=-1)
    x = normalize_with(raw[0], config.normalization)[None]
    return raw, keras.activations.softmax(model(x, training=False)).numpy()


def _cover(raw, probabilities, path, config):
    """The test output's labels over the test input's centre; a volume's middle slice."""
    if config.is_volume:
        from ..volume_instances import label_volume
        labels = label_volume(probabilities[0], config.postprocessing_settings,
                              config.voxel_size)
        margins = [(r - o) // 2 for r, o in zip(raw.shape[1:4], labels.shape)]
        middle = labels.shape[0] // 2
        raw, labels = raw[:, margins[0] + middle], labels[middle]
        margins = margins[1:]
    else:
        labels = label_image(probabilities[0], config.postprocessing_settings)
        margins = [(raw.shape[1] - labels.shape[0]) // 2] * 2   # the output is the centre
    centre = raw[0, margins[0]:margins[0] + labels.shape[0],
                 margins[1]:margins[1] + labels.shape[1], 0]
    write_image(path, overlay(centre, labels), overwrite=True)


def _normalization_text(norm):
    where = ("the training set's" if norm["method"] == "dataset" else "each image's")
    return (f"normalised by {where} {norm['low']} / {norm['high']} percentiles"
            + (f" (intensities {norm['range'][0]:g} / {norm['range'][1]:g})"
               if norm["method"] == "dataset" else ""))


def _preprocessing(norm, space):
    """The bioimage.io step equal to the folder's normalisation over the ``space`` axes."""
    axes = [*space, "channel"]
    if norm["method"] == "dataset":
        lo, hi = norm["range"]
        return {"id": "scale_linear", "kwargs": {"axes": axes, "gain": 1.0 / (hi - lo),
                                                 "offset": -lo / (hi - lo)}}
    return {"id": "scale_range", "kwargs": {"axes": axes, "min_percentile": norm["low"],
                                            "max_percentile": norm["high"]}}


def export_bioimageio(model, config, path, onnx=True):
    """Write a bioimage.io model package (zip) to ``path``."""
    spec = spec_module()
    a = config.architecture
    rules = axis_rules(config)
    space = [name for name, *_ in rules]
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
        (tmp / "README.md").write_text(_documentation(config, rules))
        (tmp / "LICENSE").write_text("MIT License: weights trained with unet-tf; see the "
                                     "training data's own license for the data.\n")
        rdf = {
            "type": "model", "format_version": "0.5.4",
            "name": f"unet-tf U-Net {Path(config.training.out).name}",
            "description": (f"{'3-D ' if a.is_volume else ''}U-Net (depth {a.depth}, "
                            f"{a.filters} filters, {a.upsampling}) for {a.num_classes}-class "
                            f"segmentation, trained with unet-tf "
                            f"{config.versions.get('unet_tf') or __version__}"),
            "authors": [{"name": "unet-tf"}],
            "cite": [UNET_PAPER, UNET_3D_PAPER] if a.is_volume else [UNET_PAPER],
            "license": "MIT",
            "documentation": "README.md",
            "covers": ["cover.png"],
            "attachments": [{"source": "LICENSE"}],
            "tags": ["unet", "segmentation", "3d" if a.is_volume else "2d", "unet-tf",
                     "tensorflow", "keras"],
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "inputs": [{
                "id": "raw", "description": f"{'volume' if a.is_volume else 'image'}; any "
                                            "size that fits min + k*step per axis",
                "axes": [{"type": "batch"},
                         *[{"type": "space", "id": name, "size": {"min": smallest, "step": step}}
                           for name, smallest, step, _ in rules],
                         {"type": "channel", "channel_names": [f"c{i}" for i in range(a.channels)]}],
                "test_tensor": {"source": "test_input.npy"},
                "data": {"type": "float32"},
                "preprocessing": [_preprocessing(norm, space)],
            }],
            "outputs": [{
                "id": "probabilities", "description": "softmax class probabilities",
                "axes": [{"type": "batch"},
                         *[{"type": "space", "id": name,
                            "size": {"tensor_id": "raw", "axis_id": name, "offset": -shrink}}
                           for name, _, _, shrink in rules],
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


def _documentation(config, rules):
    a = config.architecture
    if a.is_volume:
        net = (f"3-D U-Net (Cicek et al. 2016) with valid convolutions planned per axis for voxel "
               f"size {voxel_text(config.voxel_size)} (z, y, x)")
        sample = "the confocal nuclei volume"
    else:
        net = "U-Net (Ronneberger et al. 2015) with valid 3x3 convolutions"
        sample = "the DSB2018 nuclei image"
    sizes = "; ".join(f"{name}: `{smallest} + k*{step}`" for name, smallest, step, _ in rules)
    shrinks = "; ".join(f"{name}: {shrink} ({shrink // 2} per side)"
                        for name, _, _, shrink in rules)
    steps = "x".join(str(step) for _, _, step, _ in rules)
    return f"""# {'3-D ' if a.is_volume else ''}U-Net exported by unet-tf

{net}: depth {a.depth}, {a.filters} filters, `{a.upsampling}` up-sampling, {a.num_classes}
classes ({', '.join(config.class_names)}).

* Input: any size per spatial axis of the form {sizes};
  {_normalization_text(config.normalization)} (as in training).
* Output: class probabilities, smaller than the input by {shrinks} voxels/pixels, consumed by
  the valid convolutions. For seamless tiling, use tiles whose output sizes are multiples of
  {steps} and mirror-pad the input by the per-side border.
* Trained with unet-tf {config.versions.get('unet_tf') or __version__} on
  {config.data.get('images', config.data.get('volumes', '?'))} {'volume' if a.is_volume else 'image'}(s).

# Validation

The package's test input is a crop of {sample} bundled with unet-tf; its test output is what
the trained Keras model gives for it. Judge the model on your own data, e.g. with
`unet-tf evaluate` (foreground IoU, F1 of matched objects, AP).
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
