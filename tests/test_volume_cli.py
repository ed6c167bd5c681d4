"""Volumes on the command line: plan, train, predict, evaluate on the bundled real stack, and the
bad inputs refused before any work (issue: volumes)."""

import json
import re

import numpy as np
import pytest
import tifffile

from unet_tf.cli import main as cli_main
from unet_tf.planner import parse_duration
from unet_tf.samples import VOLUME_VOXEL_SIZE, load_sample_volume
from unet_tf.volume_files import stack_info


def write_stack(path, array, voxel_size=VOLUME_VOXEL_SIZE):
    """A ZYX ImageJ stack, with its voxel size unless ``voxel_size`` is None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if voxel_size is None:
        tifffile.imwrite(path, array, imagej=True, metadata={"axes": "ZYX"})
    else:
        z, y, x = voxel_size
        tifffile.imwrite(path, array, imagej=True, resolution=(1 / x, 1 / y),
                         metadata={"spacing": z, "unit": "um", "axes": "ZYX"})
    return path


def main(args):
    return cli_main([str(a) for a in args])


@pytest.fixture(scope="module")
def sample_folders(tmp_path_factory):
    """The bundled volume split by region: x < 128 trains, x >= 128 is held out."""
    root = tmp_path_factory.mktemp("volumes")
    volume, labels = load_sample_volume()
    for split, columns in (("train", slice(0, 128)), ("test", slice(128, None))):
        write_stack(root / split / "images" / "nuclei.tif", volume[..., columns])
        write_stack(root / split / "masks" / "nuclei.tif", labels[..., columns], None)
    return root


def test_the_voxel_size_is_read_from_imagej_and_ome_metadata(tmp_path):
    volume = np.zeros((5, 20, 30), np.uint16)
    assert stack_info(write_stack(tmp_path / "ij.tif", volume, (1.0, 0.25, 0.2))) == \
        ("ZYX", (1.0, 0.25, 0.2))
    tifffile.imwrite(tmp_path / "ome.tif", volume, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
    assert stack_info(tmp_path / "ome.tif") == ("ZYX", (2.0, 0.5, 0.5))


def test_the_plan_says_3d_and_why(sample_folders, capsys):
    assert main(["plan", "--images", sample_folders / "train" / "images",
                 "--masks", sample_folders / "train" / "masks", "--time-budget", "30m"]) == 0
    shown = capsys.readouterr().out
    assert "ZYX, a 3-D net" in shown and "voxel size 0.29x0.26x0.26" in shown
    assert "pooled along ZYX" in shown and "tile_size" in shown


def test_volumes_without_a_voxel_size_or_with_bad_axes_are_refused(tmp_path, capsys):
    volume, labels = load_sample_volume()
    write_stack(tmp_path / "images" / "a.tif", volume[:, :64, :64], None)
    write_stack(tmp_path / "masks" / "a.tif", labels[:, :64, :64], None)
    args = ["plan", "--images", tmp_path / "images", "--masks", tmp_path / "masks"]
    assert main([*args, "--axes", "ZYX"]) == 2
    assert "states no voxel size" in capsys.readouterr().err
    assert main([*args, "--axes", "TYX", "--voxel-size", "1,1,1"]) == 2
    assert "--axes TYX trains a 2-D net" in capsys.readouterr().err
    assert main([*args, "--voxel-size", "1,0,1"]) == 2
    assert "three positive numbers" in capsys.readouterr().err


def test_a_stack_that_says_neither_z_nor_t_is_asked_about(tmp_path, capsys):
    volume, labels = load_sample_volume()
    for folder, array in (("images", volume[:4, :64, :64]), ("masks", labels[:4, :64, :64])):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "a.tif", array, photometric="minisblack")  # QYX
    args = ["plan", "--images", tmp_path / "images", "--masks", tmp_path / "masks"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "axes (QYX) do not say whether its pages are a volume or frames" in err
    assert "--axes ZYX" in err and "--axes TYX" in err
    assert main([*args, "--axes", "TYX", "--time-budget", "10m"]) == 0   # plans only: any
    # budget over the minimum (1m was under it once on a busy 2-core machine: 0.16 s a step)
    assert "their pages train a 2-D net as frames (--axes TYX" in capsys.readouterr().out


def test_train_predict_evaluate_round_trip_on_the_real_stack(sample_folders, tmp_path, capsys):
    """``train`` with nothing but the data and a time budget: the voxel size from the stack's
    metadata, everything else planned; then predict and evaluate the held-out half. The budget
    is the shortest the planner accepts here (it names it when refusing a shorter one), with a
    margin for the noise of its step timing (the default 10 minutes is too long for CI)."""
    model = tmp_path / "model"
    train = ["train", "--images", sample_folders / "train" / "images",
             "--masks", sample_folders / "train" / "masks", "--out", model, "--quiet"]
    assert main([*train, "--time-budget", "30s"]) == 2
    shortest = re.search(r"use --time-budget (\S+) or more", capsys.readouterr().err).group(1)
    budget = 1.25 * parse_duration(shortest)
    assert main([*train, "--time-budget", f"{budget:.0f}s"]) == 0
    minutes, seconds = re.search(r"trained in (?:(\d+)m)?(\d+)s \(budget",
                                 capsys.readouterr().out).groups()
    assert 60 * int(minutes or 0) + int(seconds) <= 1.15 * budget   # the plan's margin, and load
    saved = json.loads((model / "config.json").read_text())
    assert saved["voxel_size"] == list(VOLUME_VOXEL_SIZE) and saved["architecture"]["pools"]
    out = tmp_path / "predicted"
    assert main(["predict", model, sample_folders / "test" / "images", "--out", out,
                 "--quiet"]) == 0
    labels = tifffile.imread(out / "nuclei.tif")
    assert labels.shape == (40, 128, 128)
    assert (out / "nuclei_overlay.png").is_file()
    metrics = tmp_path / "metrics.json"
    capsys.readouterr()
    assert main(["evaluate", model, "--images", sample_folders / "test" / "images",
                 "--masks", sample_folders / "test" / "masks", "--json", metrics,
                 "--quiet"]) == 0
    scores = json.loads(metrics.read_text())["images"]["nuclei"]
    assert scores["true"] == 9 and scores["f1"] > 0   # thresholded reference: a weak yardstick
    again = tmp_path / "again"                       # train --config repeats a 3-D run
    assert main(["train", "--config", model / "config.json", "--out", again,
                 "--epochs", "1", "--steps-per-epoch", "3", "--quiet"]) == 0
    repeated = json.loads((again / "config.json").read_text())
    assert repeated["architecture"] == saved["architecture"]
    assert repeated["tile_size"] == saved["tile_size"]
    flat = tmp_path / "flat" / "a.tif"
    tifffile.imwrite(flat.parent.mkdir() or flat, np.zeros((64, 64), np.uint16))
    assert main(["predict", model, flat, "--out", tmp_path / "p2"]) == 2   # 2-D for a 3-D net
    assert "a volume must be a ZYX" in capsys.readouterr().err
    assert not (tmp_path / "p2" / "a.tif").exists()


def test_plan_from_a_3d_model_plans_a_fine_tune(sample_folders, trained_volume_folder, capsys):
    data = ["--images", sample_folders / "test" / "images", "--masks",
            sample_folders / "test" / "masks"]
    assert main(["plan", *data, "--from", trained_volume_folder]) == 0
    out = capsys.readouterr().out
    assert "a 3-D net" in out and "Adam at a tenth" in out and "the source's" in out
    assert str(trained_volume_folder) in out
    assert main(["plan", *data, "--from", trained_volume_folder, "--voxel-size",
                 "1.5,0.26,0.26"]) == 2
    assert "plan pools" in capsys.readouterr().err
