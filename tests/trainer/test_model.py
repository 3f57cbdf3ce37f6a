"""Each hyperparameter reaches Keras: checked on the built model and optimizer themselves."""

import keras
import numpy as np
import pytest

from hpsearch.params import count_weights, validate_params
from tests.trainer.notes import NOTES_MODEL
from trainer.errors import IncompatibleModelError
from trainer.model import build_model, build_optimizer


def count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def test_notes_model_has_the_notes_parameter_counts() -> None:
    model = build_model(validate_params(NOTES_MODEL), (28, 28, 1), 10)
    assert model.count_params() == 271_346
    assert count(model.trainable_weights) == 268_978
    assert count(model.non_trainable_weights) == 2_368
    bn_sizes = [
        layer.count_params()
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bn_sizes == [3_136, 1_200, 400]


def layer_kinds(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_bn_before_activation_drops_the_dense_bias() -> None:
    model = build_model(validate_params({"batch_norm": "before", "hidden_units": [16]}), (4,), 3)
    assert layer_kinds(model)[1:4] == ["Dense", "BatchNormalization", "Activation"]
    assert model.get_layer("dense_1").use_bias is False


def test_bn_after_activation_keeps_the_bias() -> None:
    model = build_model(validate_params({"batch_norm": "after", "hidden_units": [16]}), (4,), 3)
    assert layer_kinds(model)[1:4] == ["Dense", "Activation", "BatchNormalization"]
    assert model.get_layer("dense_1").use_bias is True


def test_no_bn_has_no_bn_layers() -> None:
    model = build_model(validate_params({"batch_norm": "none", "hidden_units": [16, 8]}), (4,), 3)
    assert "BatchNormalization" not in layer_kinds(model)


def test_bn_momentum_drives_the_moving_mean_as_in_the_notes() -> None:
    # moving = momentum * moving + (1 - momentum) * batch_stat, from moving_mean 0, moving_var 1.
    momentum = 0.9
    params = validate_params(
        {
            "input_batch_norm": True,
            "bn_momentum": momentum,
            "hidden_units": [4],
            "learning_rate": 0.0001,
        }
    )
    model = build_model(params, (3,), 2)
    model.compile(optimizer=build_optimizer(params), loss="sparse_categorical_crossentropy")
    x = np.array([[1.0, 2.0, 3.0], [3.0, 6.0, 0.0], [5.0, 1.0, 3.0], [7.0, 3.0, 6.0]], np.float32)
    model.train_on_batch(x, np.array([0, 1, 0, 1]))
    bn = model.get_layer("input_bn")
    assert bn.momentum == momentum
    np.testing.assert_allclose(bn.moving_mean.numpy(), (1 - momentum) * x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), momentum * 1.0 + (1 - momentum) * x.var(axis=0), rtol=1e-5
    )


def test_dropout_follows_each_hidden_block_with_the_rate() -> None:
    model = build_model(validate_params({"dropout": 0.35, "hidden_units": [16, 8, 4]}), (4,), 3)
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.35, 0.35, 0.35]


def test_zero_dropout_adds_no_layer() -> None:
    model = build_model(validate_params({"dropout": 0.0, "hidden_units": [16]}), (4,), 3)
    assert "Dropout" not in layer_kinds(model)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("he_normal", "HeNormal"),
        ("he_uniform", "HeUniform"),
        ("glorot_normal", "GlorotNormal"),
        ("glorot_uniform", "GlorotUniform"),
        ("lecun_normal", "LecunNormal"),
    ],
)
def test_initializer_reaches_every_hidden_layer(name, cls) -> None:
    model = build_model(validate_params({"initializer": name, "hidden_units": [8, 8]}), (4,), 3)
    kinds = {type(model.get_layer(f"dense_{i}").kernel_initializer).__name__ for i in (1, 2)}
    assert kinds == {cls}


@pytest.mark.parametrize("activation", ["relu", "elu", "selu", "leaky_relu", "tanh", "sigmoid"])
def test_activation_reaches_keras(activation) -> None:
    model = build_model(validate_params({"activation": activation, "hidden_units": [8]}), (4,), 3)
    layer = model.get_layer(f"dense_1_{activation}")
    assert layer.activation.__name__ == activation


def test_weight_decay_adds_half_lambda_times_squared_norm() -> None:
    wd = 0.1
    model = build_model(validate_params({"weight_decay": wd, "hidden_units": [5]}), (3,), 2)
    model(np.zeros((1, 3), np.float32))
    kernels = [model.get_layer(n).kernel.numpy() for n in ("dense_1", "output")]
    expected = wd / 2 * sum(float((k**2).sum()) for k in kernels)
    assert float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses)) == pytest.approx(
        expected, rel=1e-5
    )


@pytest.mark.parametrize(
    ("optimizer", "cls", "momentum", "nesterov"),
    [
        ("sgd", "SGD", 0.0, False),
        ("momentum", "SGD", 0.8, False),
        ("nesterov", "SGD", 0.8, True),
        ("adam", "Adam", None, None),
        ("rmsprop", "RMSprop", None, None),
        ("adagrad", "Adagrad", None, None),
    ],
)
def test_optimizer_and_learning_rate_reach_keras(optimizer, cls, momentum, nesterov) -> None:
    opt = build_optimizer(
        validate_params({"optimizer": optimizer, "learning_rate": 0.0123, "momentum": 0.8})
    )
    assert type(opt).__name__ == cls
    assert float(opt.learning_rate) == pytest.approx(0.0123)
    if momentum is not None:
        assert opt.momentum == momentum
        assert opt.nesterov is nesterov


@pytest.mark.parametrize(
    ("mode", "keras_arg"),
    [("value", "clipvalue"), ("norm", "clipnorm"), ("global_norm", "global_clipnorm")],
)
def test_clip_mode_sets_the_matching_keras_argument(mode, keras_arg) -> None:
    opt = build_optimizer(validate_params({"clip_mode": mode, "clip_threshold": 2.5}))
    config = opt.get_config()
    assert config[keras_arg] == 2.5
    others = {"clipvalue", "clipnorm", "global_clipnorm"} - {keras_arg}
    assert all(config[o] is None for o in others)


def step_with_gradient(params: dict, gradient: list[float]) -> np.ndarray:
    """Apply one SGD step (learning rate 1) from 0: the update is minus the clipped gradient."""
    opt = build_optimizer(validate_params({"learning_rate": 1.0, **params}))
    var = keras.Variable(np.zeros(2, np.float32))
    opt.apply_gradients([(keras.ops.convert_to_tensor(np.array(gradient, np.float32)), var)])
    return -var.numpy()


def test_clipvalue_turns_the_notes_gradient_into_the_notes_vector() -> None:
    clipped = step_with_gradient({"clip_mode": "value", "clip_threshold": 1.0}, [0.9, 100.0])
    np.testing.assert_allclose(clipped, [0.9, 1.0], rtol=1e-6)


@pytest.mark.parametrize("mode", ["norm", "global_norm"])
def test_clipnorm_turns_the_notes_gradient_into_the_notes_vector(mode) -> None:
    clipped = step_with_gradient({"clip_mode": mode, "clip_threshold": 1.0}, [0.9, 100.0])
    np.testing.assert_allclose(clipped, [0.00899964, 0.9999595], rtol=1e-5)


def test_no_clipping_leaves_the_gradient_alone() -> None:
    np.testing.assert_allclose(step_with_gradient({}, [0.9, 100.0]), [0.9, 100.0], rtol=1e-6)


def test_cnn_has_one_gamma_beta_pair_per_channel() -> None:
    params = validate_params(
        {
            "architecture": "cnn",
            "conv_filters": [6, 12],
            "batch_norm": "before",
            "hidden_units": [16],
        }
    )
    model = build_model(params, (8, 8, 1), 10)
    assert model.get_layer("conv_1_bn").gamma.shape == (6,)
    assert model.get_layer("conv_2_bn").beta.shape == (12,)
    assert model.get_layer("conv_1").use_bias is False
    assert [type(lyr).__name__ for lyr in model.layers[1:5]] == [
        "Conv2D",
        "BatchNormalization",
        "Activation",
        "MaxPooling2D",
    ]


def test_cnn_on_a_table_is_rejected_before_training() -> None:
    with pytest.raises(IncompatibleModelError) as info:
        build_model(validate_params({"architecture": "cnn"}), (20,), 3)
    assert info.value.errors[0].field == "architecture"
    assert "image-shaped" in info.value.errors[0].reason


def dense_sizes(model) -> list[int]:
    return [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)][:-1]


def test_a_width_and_a_depth_build_that_many_layers_of_that_width() -> None:
    model = build_model(validate_params({"hidden_units": 24, "hidden_layers": 3}), (5,), 2)
    assert dense_sizes(model) == [24, 24, 24]
    # The depth alone takes its width from the fixed list's first entry.
    fixed = validate_params({"hidden_units": [40, 10], "hidden_layers": 1})
    assert dense_sizes(build_model(fixed, (5,), 2)) == [40]
    cnn = validate_params(
        {"architecture": "cnn", "conv_filters": 4, "conv_blocks": 3, "hidden_units": [8]}
    )
    built = build_model(cnn, (8, 8, 1), 3)
    filters = [lyr.filters for lyr in built.layers if isinstance(lyr, keras.layers.Conv2D)]
    assert filters == [4, 4, 4]


@pytest.mark.parametrize(
    ("values", "input_shape"),
    [
        ({"hidden_units": 64, "hidden_layers": 3, "batch_norm": "before"}, (10,)),
        ({"hidden_units": 7, "hidden_layers": 1, "batch_norm": "after"}, (8, 8, 1)),
        ({"hidden_layers": 0, "input_batch_norm": True}, (12,)),
        ({"hidden_units": [300, 100], "hidden_layers": 2}, (28, 28, 1)),
        (
            {
                "architecture": "cnn",
                "conv_filters": 5,
                "conv_blocks": 3,
                "kernel_size": 5,
                "hidden_units": 9,
                "hidden_layers": 2,
                "batch_norm": "before",
                "input_batch_norm": True,
            },
            (28, 28, 1),
        ),
        ({"architecture": "cnn", "conv_filters": [3, 6], "batch_norm": "after"}, (9, 7)),
    ],
)
def test_count_weights_counts_what_keras_builds(values, input_shape) -> None:
    """The service's size limit counts with ``count_weights``, without Keras: it must agree with
    the model the trainer builds, widths and depths included."""
    params = validate_params(values)
    model = build_model(params, input_shape, 10)
    assert count_weights(params, input_shape, 10) == model.count_params()
