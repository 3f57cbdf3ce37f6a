"""Keras model and optimizer building from ``TrialParams``, kept apart from training (as keras-tuner
keeps ``build(hp)`` apart from ``fit``) so that each can be checked on its own."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from hpsearch.params import TrialParams
from trainer.errors import IncompatibleModelError


def build_model(params: TrialParams, input_shape: tuple[int, ...], n_classes: int) -> keras.Model:
    """The model a trial trains: an MLP or a CNN with the trial's BN, dropout and initializer.

    ``mlp``: [Flatten] -> [BN] -> per hidden layer a dense block -> Dense(n_classes, softmax).
    ``cnn``: [BN] -> per filter count Conv2D -> BN (one gamma/beta per channel) -> activation ->
    max-pooling -> Flatten -> the same dense blocks as the MLP -> softmax.
    A dense or conv block places BN ``before`` the activation (the layer then drops its bias,
    which BN's beta replaces) or ``after`` it, and is followed by dropout when ``dropout > 0``.
    """
    regularizer = keras.regularizers.L2(params.weight_decay / 2) if params.weight_decay else None
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    if params.architecture == "mlp":
        if len(input_shape) > 1:
            x = layers.Flatten(name="flatten")(x)
        if params.input_batch_norm:
            x = _batch_norm(params, "input_bn")(x)
    else:
        x = _image_input(x, input_shape)
        if params.input_batch_norm:
            x = _batch_norm(params, "input_bn")(x)
        for i, filters in enumerate(params.conv_filters, start=1):
            conv = layers.Conv2D(
                filters,
                params.kernel_size,
                padding="same",
                name=f"conv_{i}",
                use_bias=params.batch_norm != "before",
                kernel_initializer=params.initializer,
                kernel_regularizer=regularizer,
            )
            x = _block(params, conv, x, f"conv_{i}")
            if x.shape[1] >= 2 and x.shape[2] >= 2:
                x = layers.MaxPooling2D(2, name=f"pool_{i}")(x)
        x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(params.hidden_units, start=1):
        dense = layers.Dense(
            units,
            name=f"dense_{i}",
            use_bias=params.batch_norm != "before",
            kernel_initializer=params.initializer,
            kernel_regularizer=regularizer,
        )
        x = _block(params, dense, x, f"dense_{i}")
    outputs = layers.Dense(
        n_classes, activation="softmax", name="output", kernel_regularizer=regularizer
    )(x)
    return keras.Model(inputs, outputs, name=f"hpsearch_{params.architecture}")


def build_compiled_model(
    params: TrialParams, input_shape: tuple[int, ...], n_classes: int
) -> keras.Model:
    """``build_model`` compiled as every trial trains it: the trial's optimizer, sparse
    categorical cross-entropy, accuracy, no XLA (the benchmarks' KerasTuner peer calls this too,
    so that both sides train the same model the same way)."""
    model = build_model(params, input_shape, n_classes)
    model.compile(
        optimizer=build_optimizer(params),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    return model


def _batch_norm(params: TrialParams, name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=params.bn_momentum, name=name)


def _block(params: TrialParams, layer: layers.Layer, x: Any, name: str) -> Any:
    x = layer(x)
    if params.batch_norm == "before":
        x = _batch_norm(params, f"{name}_bn")(x)
    x = layers.Activation(params.activation, name=f"{name}_{params.activation}")(x)
    if params.batch_norm == "after":
        x = _batch_norm(params, f"{name}_bn")(x)
    if params.dropout > 0:
        x = layers.Dropout(params.dropout, name=f"{name}_dropout")(x)
    return x


def _image_input(x: Any, input_shape: tuple[int, ...]) -> Any:
    if len(input_shape) == 2:  # (height, width): one channel
        return layers.Reshape((*input_shape, 1), name="add_channel")(x)
    if len(input_shape) == 3:
        return x
    raise IncompatibleModelError(
        "architecture",
        f"'cnn' needs image-shaped examples (height, width[, channels]); this dataset's examples "
        f"have shape {input_shape}: use 'mlp'",
    )


def build_optimizer(params: TrialParams) -> keras.optimizers.Optimizer:
    """The trial's optimizer with its learning rate, momentum and gradient clipping."""
    clip: dict[str, float] = {}
    if params.clip_mode != "none":
        assert params.clip_threshold is not None  # guaranteed by TrialParams' validation
        key = {"value": "clipvalue", "norm": "clipnorm", "global_norm": "global_clipnorm"}
        clip[key[params.clip_mode]] = params.clip_threshold
    lr = params.learning_rate
    match params.optimizer:
        case "sgd":
            return keras.optimizers.SGD(lr, **clip)
        case "momentum":
            return keras.optimizers.SGD(lr, momentum=params.momentum, **clip)
        case "nesterov":
            return keras.optimizers.SGD(lr, momentum=params.momentum, nesterov=True, **clip)
        case "adam":
            return keras.optimizers.Adam(lr, **clip)
        case "rmsprop":
            return keras.optimizers.RMSprop(lr, **clip)
        case "adagrad":
            return keras.optimizers.Adagrad(lr, **clip)
    raise AssertionError(f"unhandled optimizer {params.optimizer!r}")
