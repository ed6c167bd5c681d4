import keras
import numpy as np
import pytest

from unet_tf import build_unet, input_size_for_output, output_size
from unet_tf.images import crop_reflect, normalize
from unet_tf.tiling import predict_tiled, tile_count, tile_stride


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    return build_unet((None, None, 1), depth=3, filters=4, dropout=0.0)


def one_pass(model, image, tile, depth=3):
    """The whole image in one forward pass, mirror-padded like the tiles see it."""
    margin = (tile - output_size(tile, depth)) // 2
    h, w = image.shape
    padded = crop_reflect(normalize(image), -margin, -margin, input_size_for_output(h, depth),
                          input_size_for_output(w, depth))
    logits = model.predict(padded[None, ..., None], verbose=0)[0]
    return logits[:h, :w]


@pytest.mark.parametrize("shape", [(200, 300), (84, 84), (30, 50), (1, 90), (97, 1), (260, 170)])
@pytest.mark.parametrize("tile", [124, 172])
def test_tiled_equals_one_pass_on_the_mirrored_image(model, sample, shape, tile):
    image = sample[0][50:50 + shape[0], 60:60 + shape[1]]
    tiled = predict_tiled(model, image, tile_size=tile, output="logits")
    assert tiled.shape == (*shape, 2)
    np.testing.assert_allclose(tiled, one_pass(model, image, tile), atol=1e-5)


@pytest.mark.parametrize("depth, tile", [(4, 116), (5, 220)])
def test_deep_nets_tile_exactly_because_windows_follow_the_pooling_grid(sample, depth, tile):
    # Their output (28, 36) is no multiple of the pooling period (8, 16): unaligned windows
    # would see a shifted pooling grid and differ from the one-pass result by O(1) in the logits.
    keras.utils.set_random_seed(0)
    deep = build_unet((None, None, 1), depth=depth, filters=2, dropout=0.0)
    image = sample[0][:150, :130]
    assert tile_stride(tile, depth) == {4: 24, 5: 32}[depth]
    tiled = predict_tiled(deep, image, tile_size=tile, output="logits")
    np.testing.assert_allclose(tiled, one_pass(deep, image, tile, depth), atol=1e-4)


def test_tiles_smaller_than_the_pooling_period_are_refused_unless_one_covers_all(sample):
    deep = build_unet((None, None, 1), depth=5, filters=2, dropout=0.0)
    assert tile_count((4, 4), 188) == 1                  # 188 -> 4x4 output: one tile, exact
    with pytest.raises(ValueError, match="4-pixel output, smaller than the pooling period 16.*204"):
        predict_tiled(deep, sample[0][:30, :30], tile_size=188)


def test_batch_size_does_not_change_the_result(model, sample):
    image = sample[0][:250, :190]
    results = [predict_tiled(model, image, tile_size=124, batch_size=b) for b in (1, 3, 16)]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)


def test_outputs_and_dtypes(model, sample):
    image = sample[0][:100, :120]
    probabilities = predict_tiled(model, image, tile_size=124)
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)
    labels = predict_tiled(model, image, tile_size=124, output="labels")
    assert labels.dtype == np.int32 and labels.shape == (100, 120)
    np.testing.assert_array_equal(labels, probabilities.argmax(-1))


def test_uint16_is_normalised_as_in_training(model, sample):
    image = sample[0][:120, :120]                    # uint16
    as_float = normalize(image)
    a = predict_tiled(model, image, tile_size=124, output="logits")
    b = predict_tiled(model, as_float, tile_size=124, output="logits", normalization=None)
    np.testing.assert_allclose(a, b, atol=1e-5)
    scaled = predict_tiled(model, image.astype(np.float64) * 17 + 3, tile_size=124, output="logits")
    np.testing.assert_allclose(a, scaled, atol=1e-4)  # percentile normalisation: scale-free


def test_channel_axis_and_errors(model, sample):
    image = sample[0][:100, :100]
    np.testing.assert_allclose(predict_tiled(model, image[..., None], tile_size=124),
                               predict_tiled(model, image, tile_size=124))
    with pytest.raises(ValueError, match="image has 3 channels, the model expects 1"):
        predict_tiled(model, np.zeros((50, 50, 3)))
    with pytest.raises(ValueError, match="input 125 is not valid for depth 3"):
        predict_tiled(model, image, tile_size=125)
    with pytest.raises(ValueError, match="output must be one of"):
        predict_tiled(model, image, output="softmax")
    with pytest.raises(ValueError, match="2-D"):
        predict_tiled(model, np.zeros((2, 3, 4, 5)))


def test_default_tile_is_just_enough_for_small_images(model, sample):
    image = sample[0][:30, :40]
    np.testing.assert_allclose(predict_tiled(model, image), predict_tiled(model, image, tile_size=84),
                               atol=1e-6)


@pytest.mark.slow
def test_huge_uint16_image_needs_only_the_output_and_a_batch_of_tiles():
    import tracemalloc
    model = build_unet((None, None, 1), depth=2, filters=2, dropout=0.0)
    image = np.random.default_rng(0).integers(0, 4000, (8192, 8192), dtype=np.uint16)  # 128 MiB
    tracemalloc.start()
    labels = predict_tiled(model, image, tile_size=1036, batch_size=2, output="labels")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert labels.shape == (8192, 8192)
    output_bytes = labels.nbytes                                  # 256 MiB of int32
    batch_bytes = 2 * 1036 * 1036 * 4 * 4                         # tiles + a few copies
    assert peak < output_bytes + batch_bytes + 32 * 2 ** 20       # no padded or float copy
