"""Learning from the way people annotate: a few objects in large frames (tiles centred on
objects, as planned), partial annotations (an ignore label that changes no gradient and no
score), and a run that learned nothing saying so (exit code 3)."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from unet_tf.backend import keras, tf   # TensorFlow as unet_tf loads it
from unet_tf import output_size, weighted_pixel_loss
from unet_tf.config import TrainConfig
from unet_tf.data import make_dataset
from unet_tf.io import write_image
from unet_tf.metrics import evaluate, match_instances
from unet_tf.planner import fingerprint, make_plan
from unet_tf.postprocess import tune
from unet_tf.sampling import TileCounter, draw_window, object_groups
from unet_tf.unet import UNet
from conftest import run_cli

CPU = {"gpus": [], "cpu_cores": 2, "available_ram_gib": 16.0}
IGNORE = 9999


def sparse_frame(sample, keep=3, size=1024):
    """The bundled image's ``keep`` largest nuclei, alone in a ``size``-px frame of its own
    background (the image's darkest pixels, tiled): under 1 % foreground."""
    image, instances = sample
    areas = np.bincount(instances.ravel())
    kept = np.argsort(areas[1:])[::-1][:keep] + 1
    rng = np.random.default_rng(0)
    background = image[instances == 0]
    background = background[background <= np.percentile(background, 50)]
    frame = rng.choice(background, (size, size)).astype(image.dtype)
    mask = np.zeros((size, size), np.uint16)
    for k, label in enumerate(kept):   # each nucleus pasted at its own place
        ys, xs = np.nonzero(instances == label)
        dy, dx = 200 + 300 * k - ys.min(), 150 + 350 * k - xs.min()
        frame[ys + dy, xs + dx] = image[ys, xs]
        mask[ys + dy, xs + dx] = k + 1
    return frame, mask


def half_ignored(instances, seed=0, margin=6):
    """Instance labels with half of the objects, and a margin around them, set to IGNORE;
    also returns the labels of the hidden objects."""
    ids = np.unique(instances)[1:]
    hidden = np.random.default_rng(seed).permutation(ids)[: len(ids) // 2]
    hide = np.isin(instances, hidden)
    region = ndi.binary_dilation(hide, iterations=margin) & ~(np.isin(instances, ids) & ~hide)
    return np.where(region, IGNORE, instances).astype(np.uint16), hidden


def tiles_with_objects(dataset, batches):
    held = []
    for _, y, w in dataset.take(batches):
        held += [bool(np.any((yi > 0) & (wi > 0))) for yi, wi in zip(y.numpy(), w.numpy())]
    return float(np.mean(held))


def test_object_groups_are_objects_or_classes():
    mask = np.zeros((20, 20), np.int32)
    mask[2:4, 2:4], mask[10:15, 10:12] = 3, 7
    groups = object_groups(mask, "foreground")
    assert sorted(len(g) for g in groups) == [4, 10]
    classes = np.where(mask == 7, 2, np.where(mask == 3, 1, 0))
    assert [len(g) for g in object_groups(classes, "classes")] == [4, 10]
    assert object_groups(np.zeros((5, 5), np.int32), "foreground") == []


def test_sparse_frames_get_the_planned_share_of_tiles_with_objects(sample):
    frames = [sparse_frame(sample, keep) for keep in (2, 3)]
    images, masks = [f for f, _ in frames], [m for _, m in frames]
    plan = make_plan(images, masks, overrides={"epochs": 1, "steps_per_epoch": 1},
                     machine=CPU)
    share = plan.settings["foreground_tiles"]
    assert 0.2 < share < 1 and "sparse objects" in plan.reasons["foreground_tiles"]
    assert plan.fingerprint["foreground_fraction"] < 0.02
    config = plan.config()
    options = dict(tile_size=config.tile_size, depth=config.depth, batch_size=8, seed=1,
                   weight_map=False)
    counter = TileCounter()
    planned = make_dataset(images, masks, foreground_tiles=share, counter=counter, **options)
    measured = tiles_with_objects(planned, 100)
    assert abs(measured - plan.tiles_with_objects) < 0.05, (measured, plan.tiles_with_objects)
    assert counter.drawn >= 800 and abs(counter.share - measured) < 0.02
    uniform = tiles_with_objects(make_dataset(images, masks, foreground_tiles=0.0, **options), 100)
    assert uniform < 0.25 and measured > uniform + 0.2
    # validation draws its tiles the same way (seeded), so it measures the objects too
    validation = make_dataset(images, masks, foreground_tiles=share, validation=True, **options)
    assert tiles_with_objects(validation, 1000) > 0.3


def test_dense_data_needs_no_centring_and_draws_what_it_always_drew(sample):
    image, instances = sample
    plan = make_plan([image], [instances], overrides={"epochs": 1, "steps_per_epoch": 1},
                     machine=CPU)
    assert plan.settings["foreground_tiles"] == 0 and plan.tiles_with_objects > 0.95
    # without centring, a window is drawn from the seed exactly as before centring existed
    groups = object_groups(instances, "foreground")
    for seed in range(20):
        rng = np.random.default_rng(seed)
        old = [int(rng.integers(0, 512 - 96 + 1)) for _ in "yx"]
        assert list(draw_window(np.random.default_rng(seed), (512, 512), 96, groups)) == old


def test_ignored_pixels_change_no_loss_and_no_gradient(sample):
    image, instances = sample
    partial, _ = half_ignored(instances)
    ignored = partial == IGNORE
    rng = np.random.default_rng(0)
    other_image = np.where(ignored, rng.integers(0, int(image.max()) + 1, image.shape),
                           image).astype(image.dtype)
    # A net of 1x1 convolutions: each output pixel sees its own input pixel only, so pixels
    # under the ignore label can act through nothing but their own (zero) loss weight. One
    # fixed intensity range: a per-image percentile would let them move every pixel's value.
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((None, None, 1)),
                            keras.layers.Conv2D(4, 1, activation="relu"), keras.layers.Conv2D(2, 1)])
    loss = weighted_pixel_loss()
    out = output_size(188, 4)
    margin = (188 - out) // 2

    def tiles(img):
        data = make_dataset([img], [partial], tile_size=188, depth=4, validation=True, seed=0,
                            batch_size=64, ignore_label=IGNORE, normalization={
                                "method": "dataset", "low": 1, "high": 99.8, "range": [0, float(image.max())]})
        x, y, w = next(iter(data))
        return x[:, margin:margin + out, margin:margin + out], y, w

    def loss_and_gradients(x, y, w):
        with tf.GradientTape() as tape:
            value = loss(y, net(x), sample_weight=w)
        return float(value), [g.numpy() for g in tape.gradient(value, net.trainable_variables)]

    x, y, w = tiles(image)
    assert np.count_nonzero(w.numpy() == 0) > 0.05 * w.numpy().size   # the ignored pixels
    other_x = tiles(other_image)[0]
    assert not np.array_equal(other_x.numpy(), x.numpy())
    other_y = np.where(w.numpy() == 0, rng.integers(0, 2, y.shape), y.numpy())
    base_loss, base_gradients = loss_and_gradients(x, y, w)
    for variant in ((other_x, y, w), (x, other_y, w), (other_x, other_y, w)):
        value, gradients = loss_and_gradients(*variant)
        assert value == pytest.approx(base_loss, rel=1e-6)
        for g, h in zip(gradients, base_gradients):
            np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-8)
    # the check itself can fail: changing annotated labels changes the loss
    flipped = np.where(w.numpy() > 0, 1 - y.numpy(), y.numpy())
    assert loss_and_gradients(x, flipped, w)[0] != pytest.approx(base_loss, rel=1e-3)


def test_the_fingerprint_leaves_ignored_pixels_out(sample):
    image, instances = sample
    partial, hidden = half_ignored(instances)
    annotated = np.where(partial == IGNORE, 0, partial)
    fp = fingerprint([image], [partial], ignore_label=IGNORE)
    alone = fingerprint([image], [annotated])
    assert fp["objects"] == alone["objects"] == len(np.unique(instances)) - 1 - len(hidden)
    assert fp["diameter_p5_p50_p95"] == alone["diameter_p5_p50_p95"]
    labelled = np.count_nonzero(partial != IGNORE)
    assert fp["foreground_fraction"] == pytest.approx(np.count_nonzero(annotated) / labelled,
                                                      abs=1e-4)
    assert fp["annotated_fraction"] == pytest.approx(labelled / partial.size, abs=1e-4)
    assert IGNORE not in fp["classes_present"]
    with pytest.raises(ValueError, match="ignore_label"):
        TrainConfig(ignore_label=0).validate()


def test_scores_leave_unannotated_pixels_out(sample):
    _, instances = sample
    partial, hidden = half_ignored(instances)
    # a prediction that finds every nucleus: the hidden ones are not false positives
    scores = evaluate(partial, instances, ignored=partial == IGNORE)
    assert scores["f1"] == 1.0 and scores["false_positives"] == 0
    assert scores["true"] == len(np.unique(instances)) - 1 - len(hidden)
    assert scores["pixel_error"] == 0.0 and scores["foreground_iou"] == 1.0
    naive = match_instances(np.where(partial == IGNORE, 0, partial), instances)
    assert naive["predicted"] > naive["true"] and naive["f1"] < 0.9
    # tuning scores the same way: a perfect foreground map (touching nuclei merge in it)
    probabilities = np.stack([instances == 0, instances > 0], -1).astype(np.float32)
    _, report = tune([probabilities], [partial], ignore_label=IGNORE)
    _, naive = tune([probabilities], [np.where(partial == IGNORE, 0, partial)])
    assert report["f1_after"] > 0.95 and naive["f1_after"] < report["f1_after"] - 0.1
    assert report["foreground_ratio"] == pytest.approx(1.0, abs=0.02)


def test_old_configs_repeat_their_run_without_centred_tiles():
    stored = json.loads(TrainConfig().to_json())
    del stored["foreground_tiles"], stored["ignore_label"]
    old = TrainConfig.from_dict(stored)
    assert old.foreground_tiles == 0.0 and old.ignore_label is None
    assert TrainConfig().foreground_tiles == 0.33   # new runs: nnU-Net's third


@pytest.mark.slow
def test_ignored_nuclei_are_not_learned_as_background(sample, tmp_path):
    """Half of the nuclei unannotated (ignore label): the net still finds them, confidently.
    The same nuclei painted as background are learned as background: the net's foreground
    probability on them halves (it still finds many: 62 nuclei labelled as such teach it)."""
    image, instances = sample
    partial, hidden = half_ignored(instances)
    as_background = np.where(partial == IGNORE, 0, partial).astype(np.uint16)
    found, confidence = {}, {}   # hidden nuclei matched; their mean foreground probability
    for name, mask, ignore in (("ignored", partial, IGNORE), ("background", as_background, None)):
        config = TrainConfig(out=str(tmp_path / name), tile_size=188, depth=4, filters=8,
                             dropout=0.0, epochs=15, steps_per_epoch=20, batch_size=4,
                             optimizer="adam", learning_rate=2e-3, lr_schedule="cosine",
                             class_weights=None, val_split=0.0, ignore_label=ignore)
        unet = UNet.train(config, [image], [mask], verbose=0)
        predicted = unet.segment(image)
        truth = np.where(np.isin(instances, hidden), instances, 0)   # the hidden nuclei only
        found[name] = match_instances(truth, predicted)["per_threshold"][0.5]["tp"] / len(hidden)
        confidence[name] = float(unet.predict(image)[..., 1:].sum(-1)[truth > 0].mean())
    assert found["ignored"] >= 0.75, found
    assert confidence["ignored"] > confidence["background"] + 0.2, confidence   # 0.79 vs 0.41 here


@pytest.mark.slow
def test_a_run_that_cannot_learn_says_so_and_exits_3(sample, tmp_path):
    """Masks shuffled between images: the model finds none of the objects; the folder is
    kept, the message says what was measured and what to try."""
    image, instances = sample
    crops = [(slice(0, 256), slice(0, 256)), (slice(256, 512), slice(256, 512))]
    for i, (crop, other) in enumerate(zip(crops, crops[::-1])):
        write_image(tmp_path / "images" / f"c{i}.tif", image[crop])
        write_image(tmp_path / "masks" / f"c{i}.tif", instances[other])   # the other's mask
    result = run_cli("train", "--images", tmp_path / "images", "--masks", tmp_path / "masks",
                     "--out", tmp_path / "model", "--tile-size", 124, "--depth", 3, "--filters",
                     4, "--epochs", 5, "--steps-per-epoch", 50, "--batch-size", 2, "--quiet")
    assert result.returncode == 3, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("unet-tf: the trained model found almost none of the objects")
    assert "F1@0.5 is 0.0" in message and "--ignore-label" in message
    assert (tmp_path / "model" / "model.keras").exists()     # the folder is kept
    assert UNet.from_folder(tmp_path / "model").segment(image[:256, :256]).shape == (256, 256)
