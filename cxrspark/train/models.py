"""The model registry: the source studies' architectures as Keras (tf.keras, Keras 2) models.

Every model takes what the curated dataset stores: a grey image of the dataset's size as float32
pixel values in [0, 255], shape (size, size, 1). Its first layers do the deterministic preprocessing
(resize to the model's own input size, grey -> RGB where the backbone wants three channels, and the
model's normalisation), so training, evaluation and serving share one definition and a logged model
needs nothing but the stored image. Random augmentation is not in the model; it lives in
:mod:`cxrspark.train.data`.

    model = build_model("seed_cnn", n_classes=3, image_size=224)
    model = build_model("transfer:DenseNet201", 3, 224, weights="/models/densenet201_notop.h5")
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tensorflow as tf

layers = tf.keras.layers


class ModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    #: the model's own input size (the stored image is resized to it inside the model)
    input_size: int
    channels: int
    #: "unit" ([0, 1]), "tf" ([-1, 1]), "caffe" (ImageNet mean subtracted), "torch" (ImageNet mean/std)
    normalisation: str
    build: Callable[..., tf.keras.Model]
    #: raised whenever the architecture changes, so that finished trainings of the old one are not reused
    #: (part of the LOSO fold and sweep cell keys)
    revision: int = 1


# ---- the studies' own CNNs ----------------------------------------------------------------------
def _seed_cnn(x: tf.Tensor, n_classes: int) -> tf.Tensor:
    """4 conv layers, max-pooling after the 2nd and the 4th, dense 256 ReLU, softmax.

    The pools are 4x4: with 2x2 pools a 224 px input leaves 56x56x64 features and a 51M-parameter
    dense layer; 4x4 keeps the model at about 3M parameters (cheap to allreduce)."""
    for filters, pool in ((32, False), (32, True), (64, False), (64, True)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        if pool:
            x = layers.MaxPooling2D(4)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return layers.Dense(n_classes, activation="softmax", name="probabilities")(x)


#: batch-norm momentum of DarkCovidNet: the original (fastai / PyTorch) uses PyTorch's 0.1, which is
#: Keras' 0.9. Keras' default 0.99 keeps 0.99^40 = 67 % of the initial statistics after one epoch of a
#: 1,254-image training set (40 steps): validation then sees a model that predicts one class, and early
#: stopping on val_loss keeps the first epochs' weights (measured on the developer set, revision 1).
DARK_BN_MOMENTUM = 0.9


def _dark_conv(x: tf.Tensor, filters: int, size: int = 3) -> tf.Tensor:
    x = layers.Conv2D(filters, size, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=DARK_BN_MOMENTUM)(x)
    return layers.LeakyReLU(0.1)(x)


def _darkcovidnet(x: tf.Tensor, n_classes: int) -> tf.Tensor:
    """DarkCovidNet (Ozturk et al. 2020): 17 convolutions in the DarkNet-19 style: single and triple
    (3x3, 1x1, 3x3) conv blocks with batch norm and leaky ReLU, five max-pools, a 3x3 conv to one map
    per class, then flatten and a dense softmax."""
    x = _dark_conv(x, 8)
    x = layers.MaxPooling2D(2)(x)
    x = _dark_conv(x, 16)
    x = layers.MaxPooling2D(2)(x)
    for i, (ni, nf) in enumerate(((16, 32), (32, 64), (64, 128), (128, 256))):
        x = _dark_conv(x, nf)
        x = _dark_conv(x, ni, 1)
        x = _dark_conv(x, nf)
        if i < 3:
            x = layers.MaxPooling2D(2)(x)
    x = _dark_conv(x, 128, 1)
    x = _dark_conv(x, 256)
    x = layers.Conv2D(n_classes, 3, padding="same", name="class_maps")(x)
    x = layers.Flatten()(x)
    return layers.Dense(n_classes, activation="softmax", name="probabilities")(x)


def _vgg_dcnn(x: tf.Tensor, n_classes: int) -> tf.Tensor:
    """A reduced VGG16: four conv-conv-pool blocks; the global average pool of every block is one
    branch, and the branches are concatenated before the classifier (multi-scale features)."""
    branches = []
    for filters in (32, 64, 128, 256):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        branches.append(layers.GlobalAveragePooling2D()(x))
    x = layers.Concatenate()(branches)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return layers.Dense(n_classes, activation="softmax", name="probabilities")(x)


# ---- transfer learning --------------------------------------------------------------------------
#: backbone -> (keras.applications constructor name, native input size, normalisation)
BACKBONES: dict[str, tuple[str, int, str]] = {
    "DenseNet201": ("DenseNet201", 224, "torch"),
    "ResNet101V2": ("ResNet101V2", 224, "tf"),
    "InceptionV3": ("InceptionV3", 299, "tf"),
    "InceptionResNetV2": ("InceptionResNetV2", 299, "tf"),
    "NASNetLarge": ("NASNetLarge", 331, "tf"),
    "VGG16": ("VGG16", 224, "caffe"),
}


def _resolve_weights(weights: str) -> str | None:
    if weights in ("none", "", None):
        return None
    if weights == "imagenet":
        return "imagenet"
    if not Path(weights).is_file():
        raise ModelError(f"weights file {weights!r} does not exist (use none, imagenet or a local "
                         f"Keras .h5 file of the backbone without its top)")
    return str(weights)


def _transfer(backbone: str) -> Callable[..., tf.Tensor]:
    ctor_name = BACKBONES[backbone][0]

    def build(x: tf.Tensor, n_classes: int, weights: str = "none", fine_tune_layers: int = 0) -> tf.Tensor:
        ctor = getattr(tf.keras.applications, ctor_name)
        size = int(x.shape[1])
        try:
            base = ctor(include_top=False, weights=_resolve_weights(weights), input_shape=(size, size, 3))
        except ValueError as exc:
            raise ModelError(f"could not load weights {weights!r} into {backbone}: {exc}") from exc
        base.trainable = fine_tune_layers > 0
        if fine_tune_layers > 0:
            for layer in base.layers[:-fine_tune_layers]:
                layer.trainable = False
            for layer in base.layers:  # batch-norm statistics stay frozen when fine-tuning
                if isinstance(layer, layers.BatchNormalization):
                    layer.trainable = False
        x = base(x, training=False)
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dropout(0.5)(x)
        x = layers.Dense(128, activation="relu",
                         activity_regularizer=tf.keras.regularizers.L1L2(l1=0.001, l2=0.001))(x)
        x = layers.BatchNormalization()(x)
        x = layers.Dropout(0.2)(x)
        return layers.Dense(n_classes, activation="softmax", name="probabilities")(x)

    return build


MODELS: dict[str, ModelSpec] = {
    "seed_cnn": ModelSpec("seed_cnn", 224, 1, "unit", _seed_cnn),
    "darkcovidnet": ModelSpec("darkcovidnet", 256, 3, "unit", _darkcovidnet, revision=2),
    "vgg_dcnn": ModelSpec("vgg_dcnn", 224, 1, "unit", _vgg_dcnn),
}
for _name, (_ctor, _size, _norm) in BACKBONES.items():
    MODELS[f"transfer:{_name}"] = ModelSpec(f"transfer:{_name}", _size, 3, _norm, _transfer(_name))


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_VAR = tuple((s * 255) ** 2 for s in (0.229, 0.224, 0.225))
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _preprocess(x: tf.Tensor, image_size: int, input_size: int, spec: ModelSpec) -> tf.Tensor:
    if image_size != input_size:
        x = layers.Resizing(input_size, input_size, name="resize_to_model")(x)
    if spec.channels == 3:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    if spec.normalisation == "unit":
        return layers.Rescaling(1.0 / 255, name="normalise")(x)
    if spec.normalisation == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(x)
    if spec.normalisation == "torch":
        return layers.Normalization(mean=_IMAGENET_MEAN, variance=_IMAGENET_VAR, name="normalise")(x)
    # caffe: BGR order minus the ImageNet means; a grey image has equal channels, so order is moot
    return layers.Normalization(mean=_CAFFE_MEAN_BGR, variance=(1.0, 1.0, 1.0), name="normalise")(x)


def build_model(name: str, n_classes: int, image_size: int, *, input_size: int | None = None,
                weights: str = "none", fine_tune_layers: int = 0) -> tf.keras.Model:
    """A model that takes stored images (image_size x image_size x 1, values 0..255) and resizes them
    to ``input_size`` (default: the model's own) inside."""
    spec = model_spec(name)
    input_size = input_size or spec.input_size
    if weights != "none" and not name.startswith("transfer:"):
        raise ModelError(f"pretrained weights are only for transfer:<backbone> models, not {name}")
    inputs = tf.keras.Input((image_size, image_size, 1), name="image")
    x = _preprocess(inputs, image_size, input_size, spec)
    if name.startswith("transfer:"):
        outputs = spec.build(x, n_classes, weights=weights, fine_tune_layers=fine_tune_layers)
    else:
        outputs = spec.build(x, n_classes)
    return tf.keras.Model(inputs, outputs, name=name.replace(":", "_"))
