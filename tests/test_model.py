import numpy as np
import pytest

from unet_tf.backend import keras, tf   # TensorFlow as unet_tf loads it
from unet_tf import build_unet, crop_amounts, next_valid_input_size, output_size, size_rule
from unet_tf.sizes import is_valid_input_size


def test_paper_network_parameters_layers_and_output():
    model = build_unet((572, 572, 1))
    assert model.count_params() == 31_030_658
    convs = [l for l in model.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
    assert len(convs) == 23
    assert model.output_shape == (None, 388, 388, 2)
    assert output_size(572) == 388
    assert sum(isinstance(l, keras.layers.Cropping2D) for l in model.layers) == 4


def test_he_normal_init_and_logits_output():
    model = build_unet(filters=8)
    conv = model.get_layer("down1_conv1")
    fan_in = 3 * 3 * 8
    std = float(np.std(conv.kernel.numpy()))
    assert abs(std - np.sqrt(2 / fan_in)) < 0.25 * np.sqrt(2 / fan_in)  # truncated normal
    assert model.get_layer("logits").activation is keras.activations.linear


def test_every_valid_size_from_188_to_700_gives_input_minus_184():
    valid = [s for s in range(100, 701) if is_valid_input_size(s)]
    assert valid == list(range(188, 701, 16))
    for s in valid:
        assert output_size(s) == s - 184
    assert size_rule(5) == (188, 16, 184)


def test_crop_amounts_are_computed_and_match_paper():
    assert crop_amounts(5) == [88, 40, 16, 4]
    assert crop_amounts(3) == [16, 4]


@pytest.mark.parametrize("size, message", [
    (570, "input 570 is not valid for depth 5: use 556 or 572"),
    (573, "input 573 is not valid for depth 5: use 572 or 588"),
    (100, "input 100 is not valid for depth 5: use 188 or larger"),
])
def test_invalid_sizes_raise_named_value_error(size, message):
    with pytest.raises(ValueError, match=message):
        output_size(size)


def test_valid_input_size_rounds_up():
    assert next_valid_input_size(570) == 572
    assert next_valid_input_size(572) == 572
    assert next_valid_input_size(1) == 188
    assert next_valid_input_size(201, depth=3) == 204


def test_dynamic_model_predicts_on_several_valid_sizes():
    model = build_unet(filters=4)
    assert model.predict(np.zeros((1, 188, 188, 1), "float32"), verbose=0).shape == (1, 4, 4, 2)
    assert model.predict(np.zeros((1, 572, 700, 1), "float32"), verbose=0).shape == (1, 388, 516, 2)


def test_model_raises_the_size_error_not_a_concat_error():
    model = build_unet(filters=4)
    with pytest.raises(ValueError, match="input 570 is not valid for depth 5: use 556 or 572"):
        model(np.zeros((1, 570, 572, 1), "float32"))
    # Traced with unknown sizes (serving, predict after retracing): same message at run time.
    fn = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 1))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="input 573 is not valid for depth 5: use 572 or 588"):
        fn(tf.zeros((1, 573, 572, 1)))


def test_build_rejects_static_invalid_size():
    with pytest.raises(ValueError, match="use 556 or 572"):
        build_unet((570, 570, 1))


def test_resize_conv_variant_has_no_transposed_conv_and_exact_sizes():
    model = build_unet(filters=4, upsampling="resize_conv")
    assert not any(isinstance(l, keras.layers.Conv2DTranspose) for l in model.layers)
    smallest, step, shrink = size_rule(5, "resize_conv")
    assert step == 16
    for s in (smallest, smallest + step, 572):
        assert model.predict(np.zeros((1, s, s, 1), "float32"), verbose=0).shape[1] == s - shrink


def test_keras_round_trip_is_exact(tmp_path):
    for upsampling in ("transpose", "resize_conv"):
        model = build_unet((None, None, 2), num_classes=3, depth=3, filters=4, upsampling=upsampling)
        x = np.random.default_rng(0).normal(size=(2, 124, 124, 2)).astype("float32")
        path = tmp_path / f"{upsampling}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)  # no custom_objects, safe_mode on
        np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
        with pytest.raises(ValueError, match="not valid for depth 3"):
            loaded(x[:, :122, :122])


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 1}, "depth must be an integer >= 2"),
    ({"upsampling": "bilinear"}, "upsampling must be one of"),
    ({"filters": 0}, "filters must be a positive integer"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"input_shape": (572, 572)}, "input_shape must be"),
])
def test_bad_builder_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_unet(**kwargs)
