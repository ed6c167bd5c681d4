"""Volumes through the whole pipeline: data, training, prediction, instances (issue: volumes)."""

import json

import numpy as np
import pytest

from unet_tf.augment import flip_rotate_volume
from unet_tf.config import TrainConfig
from unet_tf.metrics import evaluate
from unet_tf.layers import VolumeSizeCheck
from unet_tf.model import build_unet_3d
from unet_tf.unet import UNet
from unet_tf.volume_data import make_volume_dataset
from unet_tf.volume_instances import distance_3d, fill_holes_3d, label_volume
from unet_tf.volume_sizes import (next_valid_volume_shape, plan_axes, volume_activation_bytes,
                                  volume_output_shape)
from unet_tf.memory import volume_tile_shape
from unet_tf.volume_tiling import predict_volume_tiled

ANISOTROPIC = (1.0, 0.2, 0.2)   # 5 slices at 1 um over 0.2 um pixels


def blobs(shape, centres, radius, spacing=(1.0, 1.0, 1.0)):
    """Instance labels of balls (physical ``radius``) at voxel ``centres``."""
    grid = np.indices(shape).astype(np.float32)
    labels = np.zeros(shape, np.uint16)
    for k, centre in enumerate(centres, 1):
        distance = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
        labels[(distance < radius ** 2) & (labels == 0)] = k
    return labels


def stack_of_nuclei(seed, shape=(5, 64, 64), count=6):
    """A 5-slice anisotropic stack: nuclei of 1.4 um radius, noisy, uint16."""
    rng = np.random.default_rng(seed)
    grid = [(y, x) for y in (14, 32, 50) for x in (14, 32, 50)]   # apart: no two touch
    centres = [(rng.uniform(1, 3), y + rng.uniform(-3, 3), x + rng.uniform(-3, 3))
               for y, x in (grid[i] for i in rng.permutation(len(grid))[:count])]
    mask = blobs(shape, centres, 1.4, ANISOTROPIC)
    volume = 200 + 800 * (mask > 0) + rng.normal(0, 60, shape)
    return np.clip(volume, 0, None).astype(np.uint16), mask


@pytest.mark.parametrize("voxel,shape", [((1.0, 1.0, 1.0), (44, 48, 52)),
                                         (ANISOTROPIC, (5, 44, 48)),
                                         ((2.0, 1.0, 1.0), (20, 60, 76))])
def test_the_activation_count_is_exactly_the_built_nets(voxel, shape):
    plan = plan_axes(voxel, 3, shape=shape)
    shape = next_valid_volume_shape(shape, plan)
    model = build_unet_3d((*shape, 2), 3, plan, filters=4)
    computed = [layer for layer in model.layers if not isinstance(layer, VolumeSizeCheck)]
    built = 4 * sum(int(np.prod(layer.output.shape[1:])) for layer in computed)  # the check is an identity
    assert volume_activation_bytes(shape, plan, 4, 2, 3) == built


def test_prediction_tiles_fit_the_budget_and_give_one_passs_result():
    plan = plan_axes(ANISOTROPIC, 3, shape=(5, 64, 64))
    model = build_unet_3d((None, None, None, 1), 2, plan, filters=4)
    volume = np.random.default_rng(0).normal(size=(7, 90, 110)).astype(np.float32)
    whole = volume_tile_shape(volume.shape, plan, 4)
    assert whole == next_valid_volume_shape(whole, plan)
    assert all(o >= n for o, n in zip(volume_output_shape(whole, plan), volume.shape))
    budget = volume_activation_bytes(whole, plan, 4) // 3
    small = volume_tile_shape(volume.shape, plan, 4, budget=budget)
    assert volume_activation_bytes(small, plan, 4) <= budget
    one = predict_volume_tiled(model, volume, plan, None, whole)
    tiled = predict_volume_tiled(model, volume, plan, None, small)
    assert one.shape == (*volume.shape, 2)
    assert np.abs(one - tiled).max() <= 1e-5


def test_the_volume_pipeline_cuts_tiles_with_their_weights_and_partial_annotations():
    volume, mask = stack_of_nuclei(0)
    plan = plan_axes(ANISOTROPIC, 3, shape=(5, 64, 64))
    tile = (9, 52, 52)                                # z mirrored beyond the 5 slices
    out = volume_output_shape(tile, plan)
    partial = mask.copy()
    partial[:, :, 32:] = 7                            # right half unannotated
    data = make_volume_dataset([volume], [partial], tile, plan, ANISOTROPIC, batch_size=2,
                               seed=0, foreground_tiles=0.5, ignore_label=7)
    x, y, w = next(iter(data))
    assert x.shape == (2, *tile, 1) and y.shape == (2, *out) and w.shape == (2, *out)
    assert set(np.unique(y.numpy())) <= {0, 1}
    validation = list(make_volume_dataset([volume], [mask], tile, plan, ANISOTROPIC,
                                          validation=True))
    _, yv, wv = validation[0]
    z = (out[0] - 5) // 2                            # output slices beyond the stack weigh 0
    assert np.all(wv.numpy()[0, :z] == 0) and np.all(wv.numpy()[0, z:z + 5] > 0)
    del data


def test_flips_keep_shapes_and_rotate_only_where_voxels_are_square():
    rng = np.random.default_rng(0)
    volume = np.arange(5 * 6 * 8).reshape(5, 6, 8)
    for _ in range(20):
        turned, = flip_rotate_volume([volume], rng, ANISOTROPIC)
        assert turned.shape == volume.shape                 # 6 x 8 plane: 0 or 180 degrees
        assert sorted(turned[:, 0, 0].tolist()) in (sorted(volume[:, a, b].tolist())
                                                    for a in (0, -1) for b in (0, -1))
    cube = np.arange(4 ** 3).reshape(4, 4, 4)
    shapes = {flip_rotate_volume([cube], rng, (1, 1, 1))[0].tobytes() for _ in range(200)}
    assert len(shapes) > 8                                   # rotations out of the plane too


def test_touching_balls_are_split_in_3d_and_holes_filled():
    truth = blobs((30, 60, 80), [(15, 30, 25), (15, 30, 47)], 12)
    foreground = (truth > 0).astype(np.float32)
    probabilities = np.stack([1 - foreground, foreground], -1)
    assert label_volume(probabilities).max() == 1
    split = label_volume(probabilities, {"split": 2})
    assert evaluate(truth, split)["f1"] == 1.0
    hollow = truth > 0
    hollow[15, 30, 25] = False
    assert fill_holes_3d(hollow, 1)[15, 30, 25] and not fill_holes_3d(hollow, 0)[15, 30, 25]


def test_the_lean_distance_is_scipys_bit_for_bit():
    from scipy import ndimage as ndi
    rng = np.random.default_rng(0)
    for shape, sampling in [((12, 40, 50), (4.0, 1.3, 1.0)), ((1, 9, 7), (1.0, 1.0, 1.0))]:
        mask = ndi.gaussian_filter(rng.random(shape), 2) > 0.5
        expected = ndi.distance_transform_edt(mask, sampling=sampling).astype(np.float32)
        assert np.array_equal(distance_3d(mask, sampling), expected)
    assert not distance_3d(np.zeros((2, 3, 4), bool), (2, 1, 1)).any()


def test_labelling_a_dense_chunk_allocates_a_few_bytes_a_voxel():
    # a chunk's labelling sets the peak memory of chunked volume prediction (issue 31's
    # 2 GiB per process): SciPy's distance alone took ~49 bytes a voxel, the labelling 45
    import tracemalloc
    truth = blobs((40, 96, 96), [(z, y, x) for z in (10, 30) for y in (20, 48, 76)
                                 for x in (20, 48, 76)], 11)          # touching balls
    foreground = (truth > 0).astype(np.float32)
    probabilities = np.stack([1 - foreground, foreground], -1)
    tracemalloc.start()
    labels = label_volume(probabilities, {"split": 2})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert evaluate(truth, labels)["f1"] == 1.0
    assert peak / truth.size < 30, f"{peak / truth.size:.1f} bytes a voxel"


def test_a_volume_config_is_checked_before_any_work():
    with pytest.raises(ValueError, match="voxel_size must be 3 positive"):
        TrainConfig(voxel_size=[1.0, 0.2], tile_size=[9, 52, 52], depth=3).validate()
    with pytest.raises(TypeError, match="3 integers"):
        TrainConfig(voxel_size=list(ANISOTROPIC), tile_size=92, depth=3).validate()
    with pytest.raises(ValueError, match="Y 50: use 48 or 52"):
        TrainConfig(voxel_size=list(ANISOTROPIC), tile_size=[9, 50, 52], depth=3).validate()


def test_a_five_slice_anisotropic_stack_trains_and_predicts(tmp_path):
    volumes, masks = zip(*(stack_of_nuclei(seed) for seed in range(3)))
    config = TrainConfig(out=str(tmp_path / "m"), voxel_size=list(ANISOTROPIC),
                         tile_size=[9, 52, 52], depth=3, filters=8, dropout=0.0, epochs=3,
                         steps_per_epoch=30, optimizer="adam", learning_rate=3e-3,
                         val_split=0.34, foreground_tiles=0.5, seed=0)
    unet = UNet.train(config, list(volumes[:2]), list(masks[:2]))
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["voxel_size"] == list(ANISOTROPIC)
    assert saved["architecture"]["pools"] == [[1, 2, 2], [1, 2, 2]]
    test_volume, test_mask = volumes[2], masks[2]
    fresh = UNet.from_folder(tmp_path / "m")             # as another process reads the folder
    probabilities = fresh.predict(test_volume)
    assert probabilities.shape == (5, 64, 64, 2)
    assert np.allclose(probabilities, unet.predict(test_volume), atol=1e-5)
    labels = fresh.segment(test_volume)
    assert labels.shape == test_mask.shape
    assert evaluate(test_mask, labels)["f1"] >= 0.8
    with pytest.raises(ValueError, match="3-D \\(ZYX\\) or 4-D"):
        fresh.predict(test_volume[0])                     # a 2-D image for a 3-D net
