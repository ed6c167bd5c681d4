"""ONNX and bioimage.io exports (the `onnx` / `bioimageio` extras; .ci/run installs both)."""

import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from unet_tf.backend import tf   # TensorFlow as unet_tf loads it
from unet_tf.exporters import export_model
from unet_tf.exporters.onnx import run_onnx
from unet_tf.model_folder import load_model_folder

pytest.importorskip("tf2onnx", reason="ONNX export needs the extra: pip install 'unet-tf[onnx]'")
pytest.importorskip("onnxruntime", reason="needs the extra: pip install 'unet-tf[onnx]'")


@pytest.fixture(scope="module")
def folder(trained_folder, tmp_path_factory):
    copy = tmp_path_factory.mktemp("interop") / "model"
    shutil.copytree(trained_folder, copy, ignore=shutil.ignore_patterns("export"))
    return copy


def assert_passes_its_own_test(package):
    """``bioimageio.core.test_model`` on ``package``, in a subprocess: bioimageio.core's Keras
    adapter sets os.environ["KERAS_BACKEND"] (to its default, torch, unless the variable is
    set), which broke later subprocesses' Keras import."""
    test = subprocess.run(
        [sys.executable, "-c", "import sys; from bioimageio.core import test_model; "
         "s = test_model(sys.argv[1]); print(s.format()); print('STATUS', s.status)",
         str(package)],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    assert "STATUS passed" in test.stdout, test.stdout[-4000:] + test.stderr[-2000:]


def test_onnx_agrees_with_keras_at_any_valid_size(folder, sample):
    path = export_model(folder, "onnx")
    import onnx
    graph = onnx.load(str(path))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
    model, config = load_model_folder(folder)
    from unet_tf.images import normalize
    for height, width in ((188, 188), (252, 204)):               # dynamic height and width
        tiles = normalize(sample[0][:height, :width])[None, ..., None]
        expected = tf.nn.softmax(model(tiles)).numpy()
        np.testing.assert_allclose(run_onnx(path, tiles), expected, atol=1e-4)
    with pytest.raises(FileExistsError):
        export_model(folder, "onnx")


def test_a_3d_net_exports_to_onnx_with_zyx_input_of_any_valid_shape(trained_volume_folder,
                                                                     tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained_volume_folder, folder)
    path = export_model(folder, "onnx")
    model, config = load_model_folder(folder)
    from unet_tf.images import normalize
    from unet_tf.samples import load_sample_volume
    volume = normalize(load_sample_volume()[0])
    for shape in ((44, 64, 64), (48, 52, 76)):             # dynamic Z, Y and X (valid sizes)
        tiles = volume[:shape[0], :shape[1], :shape[2]][None, ..., None]
        tiles = np.pad(tiles, [(0, 0), (0, shape[0] - tiles.shape[1]), (0, 0), (0, 0), (0, 0)],
                       mode="reflect")
        expected = tf.nn.softmax(model(tiles)).numpy()
        assert expected.shape[1:4] == tuple(s - 40 for s in shape)
        np.testing.assert_allclose(run_onnx(path, tiles), expected, atol=1e-4)


def test_bioimageio_package_validates_and_passes_its_own_test(folder):
    pytest.importorskip("bioimageio.core", reason="needs the extra: pip install "
                                                  "'unet-tf[bioimageio]'")
    path = export_model(folder, "bioimageio")
    names = set(zipfile.ZipFile(path).namelist())
    assert {"rdf.yaml", "model.keras", "model.onnx", "test_input.npy", "test_output.npy",
            "cover.png", "README.md", "LICENSE"} <= names
    assert_passes_its_own_test(path)
    from bioimageio.spec import load_model_description
    description = load_model_description(path)
    y_in, y_out = description.inputs[0].axes[1], description.outputs[0].axes[1]
    assert (y_in.size.min, y_in.size.step) == (92, 8)              # depth 4: 92 + 8k
    assert y_out.size.offset == -88                                # 44 px per side
    (scale,) = [step for step in description.inputs[0].preprocessing if step.id == "scale_range"]
    assert (scale.kwargs.min_percentile, scale.kwargs.max_percentile) == (1.0, 99.8)
    assert "10.1007/978-3-319-24574-4_28" in str(description.cite[0].doi)


def test_a_3d_net_bioimageio_package_has_zyx_axes_and_passes_its_own_test(
        trained_volume_folder, tmp_path):
    pytest.importorskip("bioimageio.core", reason="needs the extra: pip install "
                                                  "'unet-tf[bioimageio]'")
    from unet_tf.volume_sizes import axis_rule, per_axis
    folder = tmp_path / "model"
    shutil.copytree(trained_volume_folder, folder)
    path = export_model(folder, "bioimageio")
    assert_passes_its_own_test(path)
    from bioimageio.spec import load_model_description
    description = load_model_description(path)
    _, config = load_model_folder(folder)
    rules = [axis_rule(p, k) for p, k in per_axis(config.architecture.plan)]
    inputs, outputs = description.inputs[0].axes, description.outputs[0].axes
    assert [str(a.id) for a in inputs[1:4]] == ["z", "y", "x"] == [str(a.id) for a in outputs[1:4]]
    assert [(a.size.min, a.size.step) for a in inputs[1:4]] == [r[:2] for r in rules]
    assert [a.size.offset for a in outputs[1:4]] == [-r[2] for r in rules]
    assert "3d" in description.tags and len(description.cite) == 2
    test_input = np.load(zipfile.ZipFile(path).open("test_input.npy"))
    assert test_input.ndim == 5 and test_input.shape[-1] == 1


def test_missing_extra_is_one_clear_line(folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    from unet_tf import cli
    assert cli.main(["export", str(folder), "--format", "onnx", "--overwrite"]) == 2
    assert "pip install 'unet-tf[onnx]'" in capsys.readouterr().err
