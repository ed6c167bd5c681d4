"""Edge TPU: the edge preset maps op by op, the paper net does not, and the checker says why."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet_tf import build_unet
from unet_tf.exporters.edgetpu import export_edgetpu
from unet_tf.exporters.tflite import convert as convert_to_tflite
from unet_tf.exporters.edgetpu import check_tflite
from unet_tf.config import PRESETS
from unet_tf.config import TrainConfig
from unet_tf.training import train

EXPORT_KIT = __import__("pathlib").Path(__file__).resolve().parent.parent / "export"


def int8_bytes(model, tiles=1):
    size = model.input_shape[1]
    representative = np.random.default_rng(0).random((tiles, 1, size, size, 1), np.float32)
    return convert_to_tflite(model, "int8", representative)


def preset_net(name, **overrides):
    p = {**PRESETS[name], **overrides}
    keras.utils.set_random_seed(0)
    return build_unet((p["tile_size"], p["tile_size"], 1), depth=p["depth"], filters=p["filters"],
                      upsampling=p["upsampling"], dropout=0.0)


def test_edge_preset_maps_fully_with_static_batch_one_and_fits_on_chip():
    report = check_tflite(int8_bytes(preset_net("edge")))
    assert report.ok, report.table()
    assert {op.op for op in report.ops} == {"CONV_2D", "MAX_POOL_2D", "RESIZE_NEAREST_NEIGHBOR",
                                           "STRIDED_SLICE", "CONCATENATION"}
    assert report.parameter_bytes <= 6 * 2 ** 20
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=int8_bytes(preset_net("edge")))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape_signature"]) == [1, 252, 252, 1] and inp["dtype"] == np.int8
    assert list(out["shape_signature"]) == [1, 150, 150, 2] and out["dtype"] == np.int8


@pytest.mark.slow
def test_the_paper_net_is_reported_with_its_unmapped_ops_and_size():
    report = check_tflite(int8_bytes(preset_net("paper")))
    assert not report.ok
    assert {op.op for op in report.unmapped} == {"TRANSPOSE_CONV"}
    assert "stride-2 transposed" in report.unmapped[0].why
    assert report.parameter_bytes > 30e6 and not report.fits_on_chip   # 31 M int8 parameters
    text = report.table()
    assert "TRANSPOSE_CONV" in text and "NOT fully mappable" in text and "it and the" in text


def test_float_dynamic_and_half_pixel_models_are_explained():
    float_report = check_tflite(convert_to_tflite(preset_net("edge", filters=4), "float32", None))
    assert not float_report.ok and "float32 tensors" in float_report.unmapped[0].why
    assert "tflite-int8" in float_report.advice

    # A dynamic batch and TF2's default resize (half-pixel centers), as a custom model may have.
    inputs = keras.Input((32, 32, 4))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Resizing(64, 64, interpolation="nearest")(x)
    custom = keras.Model(inputs, keras.layers.Conv2D(2, 1)(x))
    converter = tf.lite.TFLiteConverter.from_keras_model(custom)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.random.rand(1, 32, 32, 4).astype(np.float32)]
                                                for _ in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    reasons = {op.op: op.why for op in check_tflite(converter.convert()).unmapped}
    assert "dynamic shapes" in reasons["CONV_2D"]
    assert "Operation version not supported" in reasons["RESIZE_NEAREST_NEIGHBOR"]


def test_checker_refuses_what_is_not_a_tflite_model(tmp_path):
    (tmp_path / "x.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="is not a TFLite model"):
        check_tflite(tmp_path / "x.tflite")
    with pytest.raises(FileNotFoundError, match="TFLite file not found"):
        check_tflite(tmp_path / "missing.tflite")


@pytest.fixture(scope="module")
def edge_folder(tmp_path_factory, sample):
    from unet_tf.io import write_image
    image, instances = sample
    root = tmp_path_factory.mktemp("edge")
    write_image(root / "images" / "nuclei.tif", image[:, :384])
    write_image(root / "masks" / "nuclei.tif", instances[:, :384])
    # The edge architecture at half its width (16 filters): int8 accuracy is what is tested
    # here, and the full preset trains 2.3x longer (194 s against 84 s); the preset itself is
    # checked op by op above.
    config = TrainConfig.from_preset(
        "edge", out=str(root / "model"), images=str(root / "images"), masks=str(root / "masks"),
        filters=16, dropout=0.0, epochs=8, steps_per_epoch=15, batch_size=2, optimizer="adam",
        learning_rate=1e-3, lr_schedule="cosine", class_weights=None, val_split=0.0)
    train(config, verbose=0)
    return root / "model"


@pytest.mark.slow
def test_edge_preset_trains_and_its_int8_model_keeps_its_accuracy(edge_folder, sample):
    from unet_tf.metrics import foreground_iou
    from unet_tf.tiling import predict_tiled
    from unet_tf.model_folder import load_model_folder
    sys.path.insert(0, str(EXPORT_KIT))
    from edge_predict import EdgeModel
    image, instances = sample
    test, truth = image[:, 384:], instances[:, 384:]
    model, config = load_model_folder(edge_folder)
    assert config.architecture.upsampling == "resize_conv" and config.tile_size == 252
    float_iou = foreground_iou(truth, predict_tiled(model, test, output="labels"))
    result = export_edgetpu(edge_folder)
    assert result.report.ok, result.report.table()
    int8_labels = EdgeModel(result.model).predict(test)
    int8_iou = foreground_iou(truth, int8_labels)
    assert float_iou > 0.7
    assert int8_iou >= float_iou - 0.03
    # Against the float model's own labels (same tile): 0.984 measured with the channels
    # equalised before conversion, 0.967 without; the net stays fully int8. Where XNNPACK
    # refuses the trained net (seen in CI), LiteRT's own int8 kernels run it, and they agree
    # with XNNPACK's at IoU ~0.99 only (test_export.py): the bound leaves room for that.
    float_labels = predict_tiled(model, test, tile_size=config.tile_size, output="labels")
    assert foreground_iou(float_labels, int8_labels) >= 0.965


@pytest.mark.slow
def test_cli_export_edgetpu_prints_the_table_and_the_verdict(edge_folder, trained_folder):
    run = lambda folder: subprocess.run(
        [sys.executable, "-m", "unet_tf.cli", "export", str(folder), "--format", "edgetpu",
         "--overwrite"], capture_output=True, text=True, timeout=600)
    good = run(edge_folder)
    assert good.returncode == 0, good.stderr
    assert "RESIZE_NEAREST_NEIGHBOR" in good.stdout and "verdict: fully mappable" in good.stdout
    assert "edgetpu_compiler is not on PATH" in good.stdout
    paper_like = run(trained_folder)                       # Conv2DTranspose up-convs
    assert paper_like.returncode == 2
    assert "TRANSPOSE_CONV" in paper_like.stdout and "NOT mapped" in paper_like.stdout
    assert paper_like.stderr.startswith("unet-tf: error: ") and "--preset edge" in paper_like.stderr
