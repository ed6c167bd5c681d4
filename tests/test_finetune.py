"""Fine-tuning (``--from``): a run starts from a trained folder's architecture and weights, a
new head when the classes differ, planned with fewer steps and a lower rate; a bad source is
refused before any work."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from unet_tf import UNet
from unet_tf.config import TrainConfig
from unet_tf.io import write_image
from unet_tf.planner import make_plan
from unet_tf.training import make_optimizer, train
from conftest import run_cli

HELD_OUT = (slice(0, 200), slice(384, 512))


def frozen_fine_tune(source, out, **settings):
    """A fine-tune whose steps change nothing (a vanishing rate): the weights as they came."""
    return TrainConfig(out=str(out), start_from=str(source), tile_size=188, depth=4, filters=8,
                       dropout=0.0, epochs=1, steps_per_epoch=2, batch_size=1, optimizer="sgd",
                       learning_rate=1e-12, momentum=0.0, val_split=0.0, **settings)


def test_a_fine_tune_starts_from_the_source_weights(trained_folder, sample, tmp_path):
    image, instances = sample
    train(frozen_fine_tune(trained_folder, tmp_path / "tuned"), [image[:, 128:384]],
          [instances[:, 128:384]], verbose=0)
    crop = image[HELD_OUT]
    np.testing.assert_allclose(UNet.from_folder(tmp_path / "tuned").predict(crop),
                               UNet.from_folder(trained_folder).predict(crop), atol=1e-4)
    stored = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert stored["training"]["start_from"] == str(trained_folder)


def test_another_target_gets_a_head_from_the_source_classes_that_hold_it(trained_folder, sample,
                                                                         tmp_path):
    image, instances = sample
    train(frozen_fine_tune(trained_folder, tmp_path / "boundary", target="boundary"),
          [image[:, :256]], [instances[:, :256]], verbose=0)
    source, tuned = (UNet.from_folder(f).model for f in (trained_folder, tmp_path / "boundary"))
    for layer in source.layers:
        if layer.weights and layer.name != "logits":
            for a, b in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights()):
                np.testing.assert_allclose(a, b, atol=1e-6)
    # background from background; interior and boundary both from the foreground
    for a, b in zip(source.get_layer("logits").get_weights(),
                    tuned.get_layer("logits").get_weights()):
        assert b.shape[-1] == 3
        np.testing.assert_allclose(a[..., [0, 1, 1]], b, atol=1e-6)


def test_the_plan_of_a_fine_tune(trained_folder, sample):
    image, instances = sample
    plan = make_plan([image[:, :256]], [instances[:, :256]], overrides={
        "start_from": str(trained_folder)}, step_timer=lambda config, channels: 0.1)
    s = plan.settings
    assert (s["depth"], s["filters"], s["upsampling"]) == (4, 8, "transpose")   # the source's
    assert s["normalization"]["method"] == "percentile"                  # the source's
    # the target is planned for this data (29 % of the sample's nuclei touch: boundary); the
    # source's foreground head is then replaced
    assert s["target"] == "boundary" and "a new head" in plan.reasons["target"]
    assert s["learning_rate"] == 1e-3 and "head is new" in plan.reasons["learning_rate"]
    same = make_plan([image[:, :256]], [instances[:, :256]], overrides={
        "start_from": str(trained_folder), "target": "foreground"},
        step_timer=lambda config, channels: 0.1)
    assert same.settings["learning_rate"] == 1e-4 and "tenth" in same.reasons["learning_rate"]
    assert plan.time_budget == 120.0            # a fine-tune's default budget on a CPU
    assert plan.start_from["weights_sha256"] == hashlib.sha256(
        (trained_folder / "model.keras").read_bytes()).hexdigest()
    assert "start_from" in plan.table() and plan.to_dict()["start_from"]["folder"]
    assert "rises from 0 over its first 10 %" in plan.reasons["lr_schedule"]


@pytest.mark.parametrize("schedule, after", [("cosine", 0.5), ("constant", 1.0)])
def test_a_fine_tune_warms_its_rate_up_and_a_fresh_run_does_not(schedule, after):
    fresh = TrainConfig(out="x", epochs=10, steps_per_epoch=100, learning_rate=1e-3,
                        lr_schedule=schedule)
    tuned = dataclasses.replace(fresh, start_from="source")

    def rate(config, step):
        optimizer = make_optimizer(config)
        optimizer.iterations.assign(step)
        return float(optimizer.learning_rate)

    # 100 warm-up steps (10 %) from 0, then cosine to 0 or the constant rate
    assert rate(tuned, 0) == 0.0 and rate(tuned, 50) == pytest.approx(5e-4)
    assert rate(tuned, 100) == pytest.approx(1e-3)
    assert rate(tuned, 550) == pytest.approx(after * 1e-3, rel=1e-3)
    assert rate(fresh, 0) == pytest.approx(1e-3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sample):
    image, instances = sample
    root = tmp_path_factory.mktemp("finetune")
    write_image(root / "images" / "a.tif", image[:, :256])
    write_image(root / "masks" / "a.tif", instances[:, :256])
    write_image(root / "rgb" / "a.tif", np.dstack([image[:, :256]] * 3))
    write_image(root / "rgb_masks" / "a.tif", instances[:, :256])
    return root


@pytest.mark.parametrize("options, message", [
    (["--from", "nowhere"], "cannot fine-tune: model folder not found"),
    (["--from", "SOURCE", "--depth", "5"], "keeps the source's architecture"),
    (["--from", "SOURCE", "--preset", "edge"], "a fine-tune keeps its source's architecture"),
    (["--from", "SOURCE", "--images", "RGB", "--masks", "RGB_MASKS"], "takes 1-channel images, "
                                                                      "these have 3"),
])
def test_a_bad_source_is_refused_before_any_work(trained_folder, folders, options, message):
    options = [str(trained_folder) if o == "SOURCE" else str(folders / "rgb") if o == "RGB" else
               str(folders / "rgb_masks") if o == "RGB_MASKS" else o for o in options]
    data = [] if "--images" in options else ["--images", folders / "images", "--masks",
                                             folders / "masks"]
    result = run_cli("train", *data, "--out", folders / "out", *options)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (folders / "out").exists()


def test_the_correction_region_is_what_was_edited_and_its_objects():
    from unet_tf.masks import correction_region
    original = np.zeros((40, 40), np.int32)
    original[5:15, 5:15] = 1                       # kept as it was
    original[20:30, 20:30] = 2                     # a person erases part of it
    edited = original.copy()
    edited[20:30, 25:30] = 0
    edited[2:6, 30:36] = 3                         # and paints a missed object
    region = correction_region(original, edited, margin=2)
    assert region[20:30, 20:30].all() and region[2:6, 30:36].all()   # whole objects
    assert region[18, 22] and not region[17, 22]                     # + the margin
    assert not region[5:15, 5:15].any()                              # untouched: not learned
    assert not correction_region(original, original).any()
    with pytest.raises(ValueError, match="the segmentation was"):
        correction_region(original, edited[:30])


# --------------------------------------------------------------------------- volumes

def test_a_3d_fine_tune_keeps_the_source_net_and_its_weights(trained_volume_folder, tmp_path):
    from unet_tf.model_folder import read_config, weights_digest
    from unet_tf.planner import FINE_TUNE_BUDGET, FINE_TUNE_RATE
    from unet_tf.samples import VOLUME_VOXEL_SIZE, load_sample_volume
    from unet_tf.volume_planner import make_volume_plan
    volume, labels = load_sample_volume()
    part = (slice(None), slice(0, 64), slice(128, 224))
    cpu = {"gpus": [], "cores": 2}
    plan = make_volume_plan([volume[part]], [labels[part]], VOLUME_VOXEL_SIZE, None,
                            {"start_from": str(trained_volume_folder)}, machine=cpu,
                            step_timer=lambda config, channels: 0.5)
    source = read_config(trained_volume_folder)
    s = plan.settings
    assert (s["depth"], s["filters"]) == (source.architecture.depth, source.architecture.filters)
    assert s["learning_rate"] == FINE_TUNE_RATE and s["normalization"] == source.normalization
    # the default fine-tune budget, raised to the shortest useful run (250 slow 3-D steps)
    assert plan.time_budget > FINE_TUNE_BUDGET["cpu"]
    assert s["epochs"] * s["steps_per_epoch"] >= 250
    assert plan.start_from["weights_sha256"] == weights_digest(trained_volume_folder)
    assert "the source's" in plan.table()
    # trained with a vanishing rate, the tuned net predicts as its source
    config = plan.config(out=str(tmp_path / "tuned"), epochs=1, steps_per_epoch=2,
                         optimizer="sgd", learning_rate=1e-12, momentum=0.0)
    with pytest.warns(UserWarning, match="training steps"):
        UNet.train(config, [volume[part]], [labels[part]], verbose=0)
    crop = volume[:, 64:, 128:]
    np.testing.assert_allclose(UNet.from_folder(tmp_path / "tuned").predict(crop),
                               UNet.from_folder(trained_volume_folder).predict(crop), atol=1e-4)


def test_a_3d_fine_tune_refuses_volumes_that_plan_another_net(trained_volume_folder, tmp_path):
    from unet_tf.samples import load_sample_volume
    from unet_tf.volume_planner import make_volume_plan
    volume, labels = load_sample_volume()
    with pytest.raises(ValueError, match="planned for voxel size 0.29x0.26x0.26 .* resample"):
        make_volume_plan([volume], [labels], (1.0, 0.26, 0.26), None,
                         {"start_from": str(trained_volume_folder)},
                         machine={"gpus": [], "cores": 2}, step_timer=lambda c, n: 0.5)
    with pytest.raises(ValueError, match="it is a 3-D net, these are 2-D images"):
        make_plan([volume[0]], [labels[0]], None, {"start_from": str(trained_volume_folder)})
