"""Channel equalisation before int8: the same function, every channel's span scaled to 1."""

import numpy as np
import pytest

from unet_tf import build_unet
from unet_tf.backend import keras
from unet_tf.exporters.equalize import channel_spans, consumers, equalize_channels


def uneven_net(upsampling):
    """A small U-Net whose channels span very different ranges (as trained nets do)."""
    keras.utils.set_random_seed(1)
    model = build_unet((60 if upsampling == "transpose" else 76,) * 2 + (1,), depth=3,
                       filters=4, dropout=0.0, upsampling=upsampling)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.get_weights() and layer.name != "logits":
            kernel, bias = layer.get_weights()
            out_axis = -2 if isinstance(layer, keras.layers.Conv2DTranspose) else -1
            shape = [1] * kernel.ndim
            shape[out_axis] = kernel.shape[out_axis]
            layer.set_weights([kernel * 10 ** rng.uniform(-1.5, 1.5, shape), bias + 0.05])
    return model


@pytest.mark.parametrize("upsampling", ["transpose", "resize_conv"])
def test_equalised_net_computes_the_same_and_its_spans_are_one(upsampling):
    model = uneven_net(upsampling)
    size = model.input_shape[1]
    tiles = np.random.default_rng(2).random((3, 1, size, size, 1), np.float32)
    equalised = equalize_channels(model, tiles)
    for tile in tiles:
        expected = model(tile, training=False).numpy()
        got = equalised(tile, training=False).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
    names = list(consumers(model))
    before = channel_spans(model, names, tiles)
    after = channel_spans(equalised, names, tiles)
    assert max(before[n].max() / before[n][before[n] > 0].min() for n in names) > 10
    for name in names:
        live = before[name] > 0
        np.testing.assert_allclose(after[name][live], 1.0, rtol=1e-4)
        np.testing.assert_array_equal(after[name][~live], 0.0)


def test_equalising_refuses_a_net_not_built_by_unet_tf():
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    with pytest.raises(ValueError, match="not a unet-tf U-Net"):
        equalize_channels(model, np.zeros((1, 1, 8, 8, 1), np.float32))
