"""The model registry: every model builds at its own input size and runs a forward pass; weights files."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from cxrspark.train.models import BACKBONES, MODELS, ModelError, build_model, model_spec  # noqa: E402

OWN_SIZE = {"seed_cnn": 224, "darkcovidnet": 256, "vgg_dcnn": 224, "transfer:DenseNet201": 224,
            "transfer:ResNet101V2": 224, "transfer:InceptionV3": 299, "transfer:InceptionResNetV2": 299,
            "transfer:NASNetLarge": 331, "transfer:VGG16": 224}


def _inner_input_size(model) -> int:
    """The spatial size the model's own layers see (after the in-model resize)."""
    for layer in model.layers:
        if layer.name == "resize_to_model":
            return int(layer.output.shape[1])
    return int(model.input_shape[1])


def test_the_registry_has_every_model_of_the_source_studies():
    assert set(MODELS) == set(OWN_SIZE)


@pytest.mark.parametrize("name", sorted(OWN_SIZE))
def test_each_model_builds_at_its_input_size_and_predicts(name):
    stored = 128
    model = build_model(name, n_classes=3, image_size=stored)
    assert model.input_shape == (None, stored, stored, 1)
    assert model_spec(name).input_size == OWN_SIZE[name]
    assert _inner_input_size(model) == OWN_SIZE[name]
    x = np.random.default_rng(0).uniform(0, 255, (2, stored, stored, 1)).astype("float32")
    p = model.predict(x, verbose=0)
    assert p.shape == (2, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    if name.startswith("transfer:"):
        base = next(layer for layer in model.layers if isinstance(layer, tf.keras.Model))
        assert base.input_shape[1:] == (OWN_SIZE[name], OWN_SIZE[name], 3)
        assert not base.trainable  # frozen base by default
        assert model.layers[-1].name == "probabilities"
        head = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Dense)]
        assert [d.units for d in head] == [128, 3] and head[0].activity_regularizer is not None


@pytest.mark.parametrize("name", ["seed_cnn", "darkcovidnet", "vgg_dcnn"])
def test_the_studies_models_train_at_small_inputs(name):
    """Cheap sweeps run every study model at 80-128 px: it builds at both ends (no pool shrinks a map
    to nothing) and a few training steps at 80 px on a learnable batch lower the loss."""
    big = build_model(name, 3, image_size=128, input_size=128)
    assert _inner_input_size(big) == 128 and big(np.zeros((1, 128, 128, 1), "float32")).shape == (1, 3)
    size = 80
    model = build_model(name, 3, image_size=size, input_size=size)
    assert _inner_input_size(model) == size
    rng = np.random.default_rng(0)
    y = np.arange(8) % 3
    x = (rng.uniform(0, 60, (8, size, size, 1)) + 80 * y[:, None, None, None]).astype("float32")
    model.compile(tf.keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    onehot = tf.one_hot(y, 3)
    # the training-mode loss of the same batch (batch-norm settling is checked on its own below)
    losses = [float(model.train_on_batch(x, onehot)) for _ in range(10)]
    assert losses[-1] < losses[0], losses


def test_seed_cnn_has_four_convolutions_and_two_pools():
    model = build_model("seed_cnn", 3, 224)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 4 and kinds.count("MaxPooling2D") == 2
    convs = [i for i, k in enumerate(kinds) if k == "Conv2D"]
    pools = [i for i, k in enumerate(kinds) if k == "MaxPooling2D"]
    assert convs[1] < pools[0] < convs[2] and convs[3] < pools[1]
    assert [layer.units for layer in model.layers if type(layer).__name__ == "Dense"] == [256, 3]


def test_darkcovidnet_has_seventeen_convolutions():
    model = build_model("darkcovidnet", 3, 256)
    assert sum(isinstance(layer, tf.keras.layers.Conv2D) for layer in model.layers) == 17


def test_an_explicit_input_size_overrides_the_model_default():
    model = build_model("vgg_dcnn", 3, image_size=64, input_size=96)
    assert _inner_input_size(model) == 96


def test_fine_tuning_unfreezes_only_the_top_layers():
    model = build_model("transfer:VGG16", 3, 64, input_size=64, fine_tune_layers=4)
    base = next(layer for layer in model.layers if isinstance(layer, tf.keras.Model))
    trainable = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    assert trainable == [layer.name for layer in base.layers[-4:] if layer.weights]


def test_a_local_weights_file_is_loaded_and_bad_ones_are_clear_errors(tmp_path):
    src = tf.keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    path = tmp_path / "vgg16_notop.h5"
    src.save_weights(str(path))
    model = build_model("transfer:VGG16", 3, 224, weights=str(path))
    base = next(layer for layer in model.layers if isinstance(layer, tf.keras.Model))
    for a, b in zip(base.get_weights(), src.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ModelError, match="does not exist"):
        build_model("transfer:VGG16", 3, 224, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ModelError, match="could not load weights"):
        build_model("transfer:ResNet101V2", 3, 224, weights=str(path))
    with pytest.raises(ModelError, match="only for transfer"):
        build_model("seed_cnn", 3, 224, weights=str(path))
    with pytest.raises(ModelError, match="unknown model"):
        build_model("transfer:AlexNet", 3, 224)
    assert set(BACKBONES) == {n.split(":")[1] for n in MODELS if n.startswith("transfer:")}


def test_darkcovidnet_batch_norm_settles_within_one_epoch_of_a_small_dataset():
    """After one epoch of the developer set (40 steps of 32 images) the inference-mode model must be the
    trained one: its batch-norm moving statistics have (nearly) reached the data's. With Keras' default
    momentum 0.99 they would still hold 67 % of their initial values, and the model evaluated in
    inference mode predicted one class."""
    model = build_model("darkcovidnet", 3, image_size=64, input_size=64)
    x = np.random.default_rng(0).uniform(100, 200, (4, 64, 64, 1)).astype("float32")
    i = next(i for i, layer in enumerate(model.layers) if isinstance(layer, tf.keras.layers.BatchNormalization))
    bn, conv = model.layers[i], model.layers[i - 1]  # the first batch norm and the convolution feeding it
    batch_mean = tf.keras.Model(model.inputs, conv.output)(x).numpy().mean(axis=(0, 1, 2))
    for _ in range(40):
        model(x, training=True)  # a training step's forward pass updates the moving statistics
    moved = bn.moving_mean.numpy() / batch_mean
    assert np.all(moved > 0.95), moved
    assert model_spec("darkcovidnet").revision >= 2  # a changed architecture: older trainings are not reused
