"""The planner: data fingerprint, choices that follow the data and the hardware, the time
budget, reproducible runs from config.json, and inference tiles free of the training tile."""

import json

import numpy as np
import pytest
import tifffile

from unet_tf.config import PRESETS
from unet_tf.io import write_image
from unet_tf.planner import MIN_STEPS, fingerprint, make_plan, minimum_budget, parse_duration
from unet_tf.memory import inference_tile_size, tile_bytes
from unet_tf.tiling import predict_tiled, tile_count
from unet_tf.training import train
from conftest import run_cli

CPU = {"gpus": [], "cpu_cores": 2, "available_ram_gib": 16.0}
GPU = {"gpus": [{"name": "fake A100", "compute_capability": [8, 0]}], "cpu_cores": 8,
       "available_ram_gib": 64.0}


def fixed_step(seconds):
    return lambda config, channels: seconds


def disks(diameter, touching_pairs=0, separate=4, size=512, seed=0):
    """An image with ``touching_pairs`` pairs of touching disks and ``separate`` lone ones."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    r = diameter / 2
    label, step = 1, int(3 * diameter)
    centres = [(y, x) for y in range(step // 2, size - step // 2, step)
               for x in range(step // 2, size - step // 2, step)]
    for i, (y, x) in enumerate(centres[:touching_pairs + separate]):
        offsets = [(0, -r), (0, r)] if i < touching_pairs else [(0, 0)]
        for dy, dx in offsets:
            mask[(yy - y - dy) ** 2 + (xx - x - dx) ** 2 <= r * r] = label
            label += 1
    image = (mask > 0) * 1000 + rng.normal(100, 10, mask.shape)
    return image.astype(np.uint16), mask


def test_fingerprint_measures_known_objects():
    image, mask = disks(20, touching_pairs=2, separate=4)
    fp = fingerprint([image], [mask])
    assert fp["objects"] == 8 and fp["images"] == 1 and fp["channels"] == 1
    assert fp["diameter_p5_p50_p95"][1] == pytest.approx(20, abs=1.5)
    assert fp["touching_fraction"] == pytest.approx(4 / 8)
    assert fp["foreground_fraction"] == pytest.approx(np.mean(mask > 0), abs=1e-4)
    assert fp["classes_present"] == [0, 1] and fp["dtypes"] == ["uint16"]
    binary = fingerprint([image], [(mask > 0).astype(np.uint8) * 255])   # touching pairs merge
    assert binary["objects"] == 6 and binary["touching_fraction"] == 0


def test_plan_follows_object_size():
    small = make_plan(*map(lambda a: [a], disks(16)), machine=CPU, step_timer=fixed_step(0.1))
    large = make_plan(*map(lambda a: [a], disks(60, size=1024)), machine=CPU,
                      step_timer=fixed_step(0.1))
    assert small.settings["depth"] == 4 and large.settings["depth"] == 5
    assert large.settings["tile_size"] > small.settings["tile_size"]
    assert large.settings["border_sigma"] > small.settings["border_sigma"]
    assert large.settings["elastic_sigma"] >= small.settings["elastic_sigma"]
    for plan in (small, large):
        assert plan.settings["optimizer"] == "adam" and plan.settings["filters"] == 16
        assert all(plan.reasons[name] for name in plan.settings), "every choice has a reason"
        assert "setting" in plan.table() and "depth" in plan.table()


def test_plan_follows_the_hardware():
    data = [[a] for a in disks(20)]
    cpu = make_plan(*data, machine=CPU, step_timer=fixed_step(0.1))
    gpu = make_plan(*data, machine=GPU, step_timer=fixed_step(0.1))
    assert (cpu.time_budget, gpu.time_budget) == (600, 1800)   # the documented defaults
    assert gpu.settings["filters"] > cpu.settings["filters"]
    assert gpu.settings["batch_size"] > cpu.settings["batch_size"]


def test_budget_becomes_steps_that_fit():
    data = [[a] for a in disks(20)]
    plans = [make_plan(*data, time_budget=budget, machine=CPU, step_timer=fixed_step(0.1))
             for budget in ("5m", "10m", "20m")]
    steps = [p.settings["epochs"] * p.settings["steps_per_epoch"] for p in plans]
    assert steps[0] < steps[1] < steps[2]
    assert steps[2] == pytest.approx(2 * steps[1], rel=0.05)
    for plan in plans:
        assert plan.estimated_seconds <= plan.time_budget
        assert plan.estimated_seconds >= 0.9 * plan.time_budget
    slow = make_plan(*data, time_budget="10m", machine=CPU, step_timer=fixed_step(0.5))
    assert slow.settings["epochs"] * slow.settings["steps_per_epoch"] < steps[1]


def test_a_too_short_budget_names_the_minimum():
    data = [[a] for a in disks(20)]
    with pytest.raises(ValueError, match=r"too short .* use --time-budget \d+m\d+s or more"):
        make_plan(*data, time_budget="30s", machine=CPU, step_timer=fixed_step(0.2))
    tuning = make_plan(*data, machine=CPU, step_timer=fixed_step(0.2)).tuning_seconds
    minimum = minimum_budget(0.2, 0, tuning)
    assert 0 < tuning < 10 and minimum == pytest.approx(15 + tuning + MIN_STEPS * 0.2 * 1.05 + 5)
    shortest = make_plan(*data, time_budget=minimum, machine=CPU, step_timer=fixed_step(0.2))
    assert shortest.settings["epochs"] * shortest.settings["steps_per_epoch"] == MIN_STEPS
    raised = make_plan(*data, time_budget="30s", machine=CPU, step_timer=fixed_step(0.2),
                       at_least_minimum=True)     # the demo's way: the minimum instead
    assert raised.time_budget == pytest.approx(minimum, abs=1)
    assert raised.settings["epochs"] * raised.settings["steps_per_epoch"] == MIN_STEPS
    assert raised.estimated_seconds <= raised.time_budget + 1e-6


def test_explicit_settings_override_single_choices():
    data = [[a] for a in disks(20)]
    plan = make_plan(*data, overrides={"filters": 8, "epochs": 3, "steps_per_epoch": 7},
                     machine=CPU, step_timer=fixed_step(0.1))
    assert plan.settings["filters"] == 8 and plan.reasons["filters"] == "given"
    assert (plan.settings["epochs"], plan.settings["steps_per_epoch"]) == (3, 7)
    assert plan.settings["depth"] == 4 and plan.time_budget is None   # no budget applied


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400),
                                           ("1h30m", 5400), ("45", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    with pytest.raises(ValueError, match="time budget"):
        parse_duration("soon")


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample):
    root = tmp_path_factory.mktemp("plan")
    image, instances = sample
    write_image(root / "images" / "a.tif", image[:256, :256])
    write_image(root / "masks" / "a.tif", instances[:256, :256])
    return root


def test_cli_refuses_a_too_short_budget_before_writing(data):
    result = run_cli("train", "--images", data / "images", "--masks", data / "masks", "--out",
                     data / "short", "--time-budget", "5s")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "too short" in result.stderr
    assert "use --time-budget" in result.stderr and not (data / "short").exists()


def test_cli_plan_prints_the_table(data):
    result = run_cli("plan", "--images", data / "images", "--masks", data / "masks")
    assert result.returncode == 0, result.stderr
    assert "setting" in result.stdout and "timed here" in result.stdout
    assert "10m00s budget" in result.stdout


def test_config_round_trip_repeats_the_run(data):
    first = data / "first"
    result = run_cli("train", "--images", data / "images", "--masks", data / "masks", "--out",
                     first, "--tile-size", 124, "--depth", 3, "--filters", 4, "--epochs", 2,
                     "--steps-per-epoch", 3, "--quiet")
    assert result.returncode == 0, result.stderr
    stored = json.loads((first / "config.json").read_text())
    assert stored["plan"]["reasons"]["depth"] == "given" and stored["plan"]["fingerprint"]
    again = run_cli("train", "--config", first / "config.json", "--out", data / "again",
                    "--quiet")
    assert again.returncode == 0, again.stderr
    repeated = json.loads((data / "again" / "config.json").read_text())
    assert {k: v for k, v in repeated["training"].items() if k != "out"} == \
        {k: v for k, v in stored["training"].items() if k != "out"}
    losses = [[float(r.split(",")[2]) for r in (f / "history.csv").read_text().split()[1:]]
              for f in (first, data / "again")]
    header = (first / "history.csv").read_text().split()[0].split(",")
    assert header[2] == "loss"
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)   # seeded: the same run


@pytest.mark.slow
def test_a_model_trained_on_small_tiles_predicts_and_exports_without_tile_size(tmp_path,
                                                                                sample):
    image, instances = sample
    from unet_tf.config import TrainConfig
    write_image(tmp_path / "images" / "a.tif", image[:200, :200])
    write_image(tmp_path / "masks" / "a.tif", instances[:200, :200])
    config = TrainConfig(out=str(tmp_path / "m"), images=str(tmp_path / "images"),
                         masks=str(tmp_path / "masks"), tile_size=188, depth=5, filters=4,
                         epochs=1, steps_per_epoch=2, batch_size=2, val_split=0.0)
    train(config, verbose=0)   # 188 at depth 5: a 4-pixel output, which cannot tile
    write_image(tmp_path / "big" / "b.tif", image[:400, :450])
    result = run_cli("predict", tmp_path / "m", tmp_path / "big", "--out", tmp_path / "p",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert tifffile.imread(tmp_path / "p" / "b.tif").shape == (400, 450)
    result = run_cli("export", tmp_path / "m", "--format", "tflite")
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "m" / "export" / "model_float32.json").read_text())
    assert meta["tile_size"] > 188 and meta["output_size"] >= meta["pooling_period"]
    assert "MiB" in meta["tile_choice"]


def test_inference_tile_fits_memory_and_the_image():
    big = inference_tile_size((4096, 4096), 4, "transpose", 16, 1, 2, batch_size=4)
    small_budget = inference_tile_size((4096, 4096), 4, "transpose", 16, 1, 2, batch_size=4,
                                       budget=64 * 2 ** 20)
    assert small_budget < big
    assert 4 * tile_bytes(small_budget, 4, 16) <= 64 * 2 ** 20
    count = tile_count((4096, 4096), small_budget, 4)
    assert tile_count((4096, 4096), small_budget - 8, 4) > count     # none smaller covers it
    assert (4 * tile_bytes(small_budget + 8, 4, 16) > 64 * 2 ** 20     # as few tiles as fit
            or tile_count((4096, 4096), small_budget + 8, 4) == count)
    # an even cover: 1152 px gets 2 x 2 tiles of 576 px output, not 3 x 3 of ~420
    even = inference_tile_size((1152, 1152), 4, "transpose", 16, 1, 2, budget=2 ** 40)
    assert tile_count((1152, 1152), even, 4) == 1
    capped = inference_tile_size((1152, 1152), 4, "transpose", 16, 1, 2,
                                 budget=tile_bytes(700, 4, 16))
    assert tile_count((1152, 1152), capped, 4) == 4 and capped == 668   # 576 + 92 output
    assert inference_tile_size((100, 120), 4, "transpose", 16, 1, 2) == 212   # 124 output


def test_default_prediction_equals_a_given_tile(trained_folder, sample):
    from unet_tf.model_folder import load_model_folder
    model, config = load_model_folder(trained_folder)
    image = sample[0][:300, 200:]
    chosen = predict_tiled(model, image, normalization=config.normalization)
    training_tile = predict_tiled(model, image, tile_size=config.tile_size,
                                  normalization=config.normalization)
    np.testing.assert_allclose(chosen, training_tile, atol=1e-4)


def test_normalisation_follows_exposure_and_content():
    """One range for the dataset when exposure is steady and some images are nearly empty;
    per-image percentiles when exposure changes (or every image is full of objects)."""
    full, full_mask = disks(20, separate=40)
    sparse, sparse_mask = disks(20, separate=1, seed=1)
    plan = make_plan([full, sparse], [full_mask, sparse_mask], machine=CPU,
                     step_timer=fixed_step(0.1))
    norm = plan.settings["normalization"]
    assert norm["method"] == "dataset" and "few objects" in plan.reasons["normalization"]
    lo, hi = norm["range"]
    assert 60 < lo < 100 and 1000 < hi < 1200       # background ~100 +- 10, objects ~1100
    assert "dataset" in plan.table()
    brighter = (full.astype(np.float32) * 3).astype(np.uint16)          # exposure changed
    plan = make_plan([brighter, sparse], [full_mask, sparse_mask], machine=CPU,
                     step_timer=fixed_step(0.1))
    assert plan.settings["normalization"] == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert "contrast differs between images" in plan.reasons["normalization"]
    given = make_plan([full, sparse], [full_mask, sparse_mask], overrides={"normalization": "image"},
                      machine=CPU, step_timer=fixed_step(0.1))
    assert given.settings["normalization"]["method"] == "percentile"


def test_a_dataset_range_is_applied_alike_everywhere():
    from unet_tf.images import dataset_normalization, normalize_with
    from unet_tf.overlap_tile import normalization_range
    images = [np.full((8, 8), 10, np.uint16), np.arange(64, dtype=np.uint16).reshape(8, 8) * 100]
    norm = dataset_normalization(images)
    pooled = np.concatenate([i.ravel() for i in images])
    assert norm["range"] == pytest.approx(np.percentile(pooled, [1.0, 99.8]).tolist())
    assert normalization_range(images[0], norm) == tuple(norm["range"])
    lo, hi = norm["range"]
    np.testing.assert_allclose(normalize_with(images[0], norm), (10 - lo) / (hi - lo), rtol=1e-6)


def test_configure_run_serves_presets_and_plans_and_repeat_run_reads_a_folders_config(tmp_path,
                                                                                    sample):
    from unet_tf.planner import configure_run, repeat_run
    image, instances = sample
    config, plan = configure_run([image], [instances], {"filters": 8, "normalization": "dataset"},
                                 preset="edge", fixed={"out": str(tmp_path / "m")})
    assert plan is None and config.filters == 8 and config.depth == PRESETS["edge"]["depth"]
    assert config.normalization["method"] == "dataset" and config.out == str(tmp_path / "m")
    with pytest.raises(ValueError, match="a preset keeps its own settings"):
        configure_run([image], [instances], preset="edge", time_budget="5m")
    (tmp_path / "config.json").write_text('{"plan": null}')
    with pytest.raises(ValueError, match="has no 'training' settings"):
        repeat_run(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        repeat_run(tmp_path / "missing.json")
