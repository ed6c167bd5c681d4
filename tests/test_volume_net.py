"""The 3-D U-Net's per-axis plan, size arithmetic and Keras model (issue: volumes)."""

import itertools

import numpy as np
import pytest

from unet_tf.sizes import size_rule
from unet_tf.volume_sizes import (trace_axis, axis_rule, check_volume_shape,
                                  next_valid_volume_shape, per_axis, plan_axes,
                                  volume_output_shape)


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_an_isotropic_axis_follows_the_2d_size_rule(depth):
    plan = plan_axes((1.0, 1.0, 1.0), depth)
    assert plan["pools"] == [(2, 2, 2)] * (depth - 1) and plan["kernels"] == [(3, 3, 3)] * depth
    assert {axis_rule(*axis) for axis in per_axis(plan)} == {size_rule(depth)}


@pytest.mark.parametrize("pools,kernels", [
    ((1, 1, 2), (1, 1, 3, 3)), ((2, 2, 2), (3, 3, 3, 3)), ((1, 2), (1, 3, 3)),
    ((2, 1, 2), (3, 3, 1, 3)), ((1, 1, 1), (1, 1, 1, 1))])
def test_the_axis_rule_is_exact_against_tracing_every_size(pools, kernels):
    smallest, step, shrink = axis_rule(pools, kernels)
    for size in range(1, 400):
        traced = trace_axis(size, pools, kernels)
        valid = size >= smallest and (size - smallest) % step == 0
        assert (traced is not None) == valid, size
        if valid:
            assert traced[2] == size - shrink


def test_coarse_z_is_neither_pooled_nor_convolved_until_the_plane_catches_up():
    plan = plan_axes((1.0, 0.2, 0.2), 4)           # 5x anisotropy
    assert plan["pools"] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert plan["kernels"] == [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]
    assert plan_axes((0.5, 0.4, 0.4), 3)["pools"] == [(2, 2, 2)] * 2   # within 2x: isotropic


def test_a_five_slice_anisotropic_stack_is_a_valid_input():
    plan = plan_axes((1.0, 0.2, 0.2), 4, shape=(5, 100, 100))
    check_volume_shape((5, 100, 100), plan)
    assert volume_output_shape((5, 100, 100), plan) == (5, 12, 12)
    assert plan_axes((1.0, 0.2, 0.2), 4, shape=(40, 100, 100)) == plan_axes((1.0, 0.2, 0.2), 4)


def test_an_invalid_shape_names_the_nearest_valid_sizes_per_axis():
    plan = plan_axes((1.0, 1.0, 1.0), 4)
    with pytest.raises(ValueError, match=r"Z 60: use 92 or larger; X 101: use 100 or 108"):
        check_volume_shape((60, 100, 101), plan)
    assert next_valid_volume_shape((60, 100, 101), plan) == (92, 100, 108)
    with pytest.raises(ValueError, match="voxel size must be positive"):
        plan_axes((0, 1, 1), 4)


@pytest.mark.parametrize("voxel,shape", [((1.0, 1.0, 1.0), (100, 100, 108)),
                                         ((1.0, 0.2, 0.2), (5, 100, 100)),
                                         ((0.8, 0.25, 0.25), (22, 92, 100))])
def test_the_keras_net_gives_the_shape_the_arithmetic_gives(voxel, shape):
    from unet_tf.model import build_unet_3d
    plan = plan_axes(voxel, 4, shape=shape)
    model = build_unet_3d(shape + (1,), num_classes=3, plan=plan, filters=2)
    expected = volume_output_shape(shape, plan)
    assert model.output_shape == (None,) + expected + (3,)
    out = model.predict(np.random.rand(1, *shape, 1).astype("float32"), verbose=0)
    assert out.shape == (1,) + expected + (3,) and np.isfinite(out).all()
    dynamic = build_unet_3d((None, None, None, 1), num_classes=3, plan=plan, filters=2)
    dynamic.set_weights(model.get_weights())           # any valid size: the same weights
    np.testing.assert_allclose(dynamic.predict(np.zeros((1, *shape, 1)), verbose=0),
                               model.predict(np.zeros((1, *shape, 1)), verbose=0), atol=1e-6)


def test_the_3d_net_raises_the_size_error_not_a_concat_error(tmp_path):
    """Called on a volume its plan cannot take, the net names the axis and the nearest valid
    sizes: at once for known sizes, as the graph runs for unknown ones (serving), and so after
    a save and load too."""
    from unet_tf.backend import keras, tf
    from unet_tf.model import build_unet_3d
    plan = plan_axes((1.0, 0.5, 0.5), 3)
    model = build_unet_3d((None, None, None, 1), plan=plan, filters=2)
    model.save(tmp_path / "m.keras")
    model = keras.saving.load_model(tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"X 49: use 48 or 52"):
        model(np.zeros((1, 20, 48, 49, 1), "float32"))
    fn = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, None, 1))])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"not valid for this net \(Y 50: use 48 or 52\)"):
        fn(tf.zeros((1, 20, 50, 48, 1)))
    assert fn(tf.zeros((1, 20, 48, 48, 1))).shape[1:4] == volume_output_shape((20, 48, 48), plan)


def test_the_3d_net_is_translation_equivariant_like_one_pass_over_a_larger_volume():
    """Valid convolutions: a sub-volume's output is the matching crop of the whole one's, when
    the sub-volume starts on the pooling grid (the basis of exact overlap-tile in 3-D)."""
    from unet_tf.model import build_unet_3d
    plan = plan_axes((1.0, 0.5, 0.5), 3)
    model = build_unet_3d((None, None, None, 1), plan=plan, filters=2)
    rng = np.random.default_rng(0)
    whole_shape = next_valid_volume_shape((60, 80, 80), plan)
    tile_shape = next_valid_volume_shape((40, 50, 50), plan)
    volume = rng.random((1, *whole_shape, 1), dtype=np.float32)
    whole = model.predict(volume, verbose=0)
    steps = [axis_rule(*axis)[1] for axis in per_axis(plan)]
    for start in itertools.product(*[(0, s) for s in steps]):
        window = tuple(slice(o, o + t) for o, t in zip(start, tile_shape))
        tile = model.predict(volume[(slice(None),) + window], verbose=0)
        out = tuple(slice(o, o + n) for o, n in zip(start, tile.shape[1:4]))
        np.testing.assert_allclose(tile, whole[(slice(None),) + out], atol=1e-5)


@pytest.mark.parametrize("voxel,volume_shape,tile", [
    ((1.0, 1.0, 1.0), (30, 41, 37), (52, 52, 60)),            # isotropic, depth 3
    ((1.0, 0.25, 0.25), (7, 61, 50), (7, 60, 52))])          # z: 1-kernels, pooled never
def test_tiled_3d_prediction_equals_one_pass_over_the_volume(voxel, volume_shape, tile):
    from unet_tf.model import build_unet_3d
    from unet_tf.overlap_tile import predict_volume
    plan = plan_axes(voxel, 3, shape=tile)
    model = build_unet_3d((None, None, None, 1), plan=plan, filters=2)
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 4000, (*volume_shape, 1)).astype(np.uint16)
    periods = [axis_rule(*axis)[1] for axis in per_axis(plan)]
    shrink = [axis_rule(*axis)[2] for axis in per_axis(plan)]

    def run(tile_shape, batch):
        output_shape = volume_output_shape(tile_shape, plan)
        return predict_volume(volume, lambda t: model.predict(t, verbose=0), tile_shape,
                              output_shape, periods, (0, 4000), batch_size=batch)

    whole = next_valid_volume_shape(tuple(n + s for n, s in zip(volume_shape, shrink)), plan)
    one_pass = run(whole, 1)
    tiled = run(next_valid_volume_shape(tile, plan), 3)
    from unet_tf.overlap_tile import window_grid_nd
    _, corners = window_grid_nd(volume_shape, volume_output_shape(tile, plan), periods)
    assert len(corners) >= 8 and len({c[0] for c in corners}) >= 2    # tiles along every axis
    assert tiled.shape == volume_shape + (2,)
    assert np.abs(tiled - one_pass).max() <= 1e-5
