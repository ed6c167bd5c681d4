"""The CLI end to end on a tiny model: train -> predict -> evaluate, and its errors."""

import json

import numpy as np
import pytest
import tifffile

from unet_tf.exporters.tflite import device_tile_size
from unet_tf.io import write_image
from unet_tf.model_folder import read_config
from conftest import run_cli


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, sample):
    image, instances = sample
    root = tmp_path_factory.mktemp("cli")
    for name, rows in (("top", slice(0, 200)), ("bottom", slice(300, 512))):
        write_image(root / "images" / f"{name}.tif", image[rows])
        write_image(root / "masks" / f"{name}.png", ((instances[rows] > 0) * 255).astype(np.uint8))
    result = run_cli("train", "--images", root / "images", "--masks", root / "masks",
                     "--out", root / "model", "--tile-size", 124, "--depth", 3, "--filters", 4,
                     "--epochs", 1, "--steps-per-epoch", 2, "--batch-size", 2, "--quiet")
    assert result.returncode == 0, result.stderr
    return root


def test_train_writes_model_folder(workspace):
    assert (workspace / "model" / "model.keras").is_file()
    assert json.loads((workspace / "model" / "config.json").read_text())["tile_size"] == 124


def test_predict_writes_masks_with_the_inputs_names_and_sizes(workspace, sample):
    image, _ = sample
    write_image(workspace / "odd.png", (image[:97, :301] // 2).astype(np.uint8))
    out = workspace / "pred"
    result = run_cli("predict", workspace / "model", workspace / "images", workspace / "odd.png",
                     "--out", out, "--probabilities", "--quiet")
    assert result.returncode == 0, result.stderr
    assert tifffile.imread(out / "top.tif").shape == (200, 512)
    assert tifffile.imread(out / "bottom_probabilities.tif").shape == (212, 512, 2)
    import cv2
    assert cv2.imread(str(out / "odd.png"), cv2.IMREAD_UNCHANGED).shape == (97, 301)
    assert cv2.imread(str(out / "odd_overlay.png")).shape == (97, 301, 3)
    again = run_cli("predict", workspace / "model", workspace / "odd.png", "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_evaluate_prints_a_table_and_json(workspace):
    result = run_cli("evaluate", workspace / "model", "--images", workspace / "images",
                     "--masks", workspace / "masks", "--json", workspace / "m.json", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "foreground_iou" in result.stdout and "mean" in result.stdout
    metrics = json.loads((workspace / "m.json").read_text())
    assert set(metrics["images"]) == {"top", "bottom"}


def test_export_int8_calibrates_on_the_training_images_and_says_how_it_agrees(workspace):
    result = run_cli("export", workspace / "model", "--format", "tflite-int8")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""                     # the converter's native chatter is kept off
    assert "model_int8.tflite" in result.stdout and "same label" in result.stdout
    meta = json.loads((workspace / "model" / "export" / "model_int8.json").read_text())
    config = read_config(workspace / "model")
    assert meta["kind"] == "int8" and (meta["tile_size"], meta["tile_choice"]) == \
        device_tile_size(config)        # the device's tile, not the training tile (124)
    again = run_cli("export", workspace / "model", "--format", "tflite-int8")
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["predict", "{ws}/nope", "{ws}/odd.png", "--out", "{ws}/x"], "model folder not found"),
    (["predict", "{ws}/model", "{ws}/missing.tif", "--out", "{ws}/x"], "input not found"),
    (["train", "--images", "{ws}/nope", "--masks", "{ws}/masks", "--out", "{ws}/m2"],
     "images folder not found"),
    (["evaluate", "{ws}/model", "--images", "{ws}/images", "--masks", "{ws}/empty"],
     "masks folder not found"),
    (["export", "{ws}/model", "--format", "tflite", "--tile-size", "125"],
     "input 125 is not valid for depth 3"),
    (["export", "{ws}/model", "--format", "tflite-int8", "--calibration-images", "{ws}/nope",
      "--overwrite"],
     "calibration folder not found"),
])
def test_bad_paths_give_one_line_and_exit_code_2(workspace, args, message):
    result = run_cli(*[a.format(ws=workspace) for a in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("unet-tf: error: ")
    assert message in result.stderr
    assert not (workspace / "x").exists() and not (workspace / "m2").exists()


def test_predict_a_stack_frame_by_frame(workspace, sample):
    stack = np.stack([sample[0][:90, :130], sample[0][100:190, :130]])
    tifffile.imwrite(workspace / "stack.tif", stack, photometric="minisblack")
    result = run_cli("predict", workspace / "model", workspace / "stack.tif", "--out",
                     workspace / "stack-out")
    assert result.returncode == 0, result.stderr
    assert tifffile.imread(workspace / "stack-out" / "stack.tif").shape == (2, 90, 130)


def _train_tiny(root, *options):
    return run_cli("train", "--images", root / "images", "--masks", root / "class_masks",
                   "--out", root / options[0], "--tile-size", 124, "--depth", 3, "--filters", 4,
                   "--epochs", 1, "--steps-per-epoch", 2, "--batch-size", 2, "--quiet",
                   *options[1:])


@pytest.fixture(scope="module")
def class_workspace(workspace, sample):
    """Class-id masks: nuclei smaller than the median are class 1, the others class 2."""
    _, instances = sample
    areas = np.bincount(instances.ravel())
    large = np.nonzero(areas > np.median(areas[1:]))[0]
    classes = np.where(instances > 0, np.where(np.isin(instances, large[large > 0]), 2, 1), 0)
    for name, rows in (("top", slice(0, 200)), ("bottom", slice(300, 512))):
        write_image(workspace / "class_masks" / f"{name}.png", classes[rows].astype(np.uint8))
    return workspace


def test_three_classes_train_predict_and_evaluate_from_the_cli(class_workspace):
    ws = class_workspace
    result = _train_tiny(ws, "classes-model", "--class-names", "background,small,large")
    assert result.returncode == 0, result.stderr
    config = json.loads((ws / "classes-model" / "config.json").read_text())
    assert config["architecture"]["num_classes"] == 3
    assert config["class_names"] == ["background", "small", "large"]
    assert config["postprocessing"] == {"target": "classes"}
    result = run_cli("predict", ws / "classes-model", ws / "images" / "top.tif", "--out",
                     ws / "classes-pred", "--probabilities", "--quiet")
    assert result.returncode == 0, result.stderr
    labels = tifffile.imread(ws / "classes-pred" / "top.tif")
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    assert tifffile.imread(ws / "classes-pred" / "top_probabilities.tif").shape == (200, 512, 3)
    result = run_cli("evaluate", ws / "classes-model", "--images", ws / "images", "--masks",
                     ws / "class_masks", "--quiet")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert {"iou_background", "iou_small", "iou_large", "f1"} <= set(header)


def test_the_boundary_target_trains_from_instances_and_predicts_instances(workspace):
    result = run_cli("train", "--images", workspace / "images", "--masks", workspace / "masks",
                     "--out", workspace / "boundary-model", "--tile-size", 124, "--depth", 3,
                     "--filters", 4, "--epochs", 1, "--steps-per-epoch", 2, "--batch-size", 2,
                     "--target", "boundary")
    assert result.returncode == 0, result.stderr
    assert "post-processing tuned on" in result.stdout
    config = json.loads((workspace / "boundary-model" / "config.json").read_text())
    assert config["class_names"] == ["background", "interior", "boundary"]
    assert config["postprocessing"]["target"] == "boundary"
    assert config["postprocessing"]["tuned_on"] == "2 training images"
    result = run_cli("predict", workspace / "boundary-model", workspace / "images" / "top.tif",
                     "--out", workspace / "boundary-pred", "--min-size", "5", "--quiet")
    assert result.returncode == 0, result.stderr
    labels = tifffile.imread(workspace / "boundary-pred" / "top.tif")
    assert labels.shape == (200, 512) and labels.dtype == np.uint16


@pytest.mark.parametrize("options, message", [
    (["--class-names", "background,a,b", "--classes", "4"], "names 3 classes (background, a, b) but num_classes is 4"),
    (["--classes", "1"], "num_classes must be >= 2"),
])
def test_bad_class_options_are_refused(class_workspace, options, message):
    result = _train_tiny(class_workspace, "bad-classes", *options)
    assert result.returncode == 2 and message in result.stderr
    assert not (class_workspace / "bad-classes").exists()
