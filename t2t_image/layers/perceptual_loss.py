"""LPIPS-style perceptual distance on frozen VGG16 features, for the VQGAN first stage."""

import os

import h5py
import keras
import numpy as np
from keras import ops

# Output channels of the 13 VGG16 convs (3x3, "same", ReLU), grouped in the 5
# stages that end before each 2x2 max-pool (Simonyan & Zisserman 2015, config D).
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Caffe/keras.applications VGG16 preprocessing: BGR order, 0..255, minus these means.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# Added (squared) under the square root of the channel norm; LPIPS adds 1e-10 to
# the norm itself. Inside the root it also keeps the gradient finite at all-zero
# feature vectors (ReLU features are often all zero at a position).
NORM_EPSILON = 1e-10


def _conv_names():
    return [
        f"block{stage + 1}_conv{i + 1}"
        for stage, widths in enumerate(VGG16_STAGES)
        for i in range(len(widths))
    ]


def _expected_shapes():
    shapes, in_channels = [], 3
    for widths in VGG16_STAGES:
        for out_channels in widths:
            shapes.append(((3, 3, in_channels, out_channels), (out_channels,)))
            in_channels = out_channels
    return shapes


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _conv2d_index(name):
    # Keras 3 names the entries of a layer list "conv2d", "conv2d_1", "conv2d_2", ...
    suffix = name[len("conv2d"):]
    return 0 if not suffix else int(suffix[1:])


def _find_datasets(path, f):
    """The 13 (kernel, bias) h5py datasets of the VGG16 convs, in network order."""
    if "layer_names" in f.attrs:
        # Legacy Keras HDF5 weights (e.g. keras.applications' vgg16 notop file).
        layers = {_text(n) for n in f.attrs["layer_names"]}
        found = []
        for name in _conv_names():
            if name not in layers or name not in f:
                raise ValueError(
                    f"VGG16 weights file {path!r} (legacy Keras HDF5 layout) has no "
                    f"layer {name!r}; its layers are {sorted(layers)}."
                )
            group = f[name]
            weight_names = [_text(n) for n in group.attrs.get("weight_names", [])]
            if len(weight_names) != 2:
                raise ValueError(
                    f"VGG16 weights file {path!r}: layer {name!r} must hold a kernel and a "
                    f"bias, found weights {weight_names}."
                )
            found.append(tuple(group[n] for n in weight_names))
        return found
    if "layers" in f and isinstance(f["layers"], h5py.Group):
        # Keras 3 ".weights.h5": layers/conv2d{,_1,...}/vars/{0: kernel, 1: bias}.
        convs = sorted(
            (k for k in f["layers"] if k == "conv2d" or k.startswith("conv2d_")),
            key=_conv2d_index,
        )
        if len(convs) != 13:
            raise ValueError(
                f"VGG16 weights file {path!r} (Keras 3 .weights.h5 layout) must hold the "
                f"13 conv layers of VGG16 at its top level, found {len(convs)}: {convs}."
            )
        found = []
        for key in convs:
            variables = f["layers"][key].get("vars")
            if variables is None or "0" not in variables or "1" not in variables:
                raise ValueError(
                    f"VGG16 weights file {path!r}: layers/{key} must hold vars/0 (kernel) "
                    "and vars/1 (bias)."
                )
            found.append((variables["0"], variables["1"]))
        return found
    raise ValueError(
        f"VGG16 weights file {path!r} is neither a legacy Keras HDF5 weights file "
        "(root attribute 'layer_names') nor a Keras 3 .weights.h5 file (group 'layers')."
    )


def _read_vgg16_weights(path):
    """Reads and checks the 13 VGG16 conv (kernel, bias) pairs of an HDF5 file.

    See `PerceptualLoss` for the two accepted layouts.

    Args:
        path: str or path-like, the HDF5 file.

    Returns:
        A list of 13 ``(kernel [3, 3, in, out], bias [out])`` float32 NumPy
        pairs in network order (block1_conv1 first).

    Raises:
        ValueError: naming ``path`` when it is missing, not HDF5, or does not
            hold VGG16 conv weights of the standard shapes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"VGG16 weights file not found: weights_path={path!r}.")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"VGG16 weights file {path!r} is not a readable HDF5 file: {err}")
    with f:
        datasets = _find_datasets(path, f)
        for name, (kernel, bias), shapes in zip(_conv_names(), datasets, _expected_shapes()):
            if (tuple(kernel.shape), tuple(bias.shape)) != shapes:
                raise ValueError(
                    f"VGG16 weights file {path!r}: {name} has kernel {tuple(kernel.shape)} "
                    f"and bias {tuple(bias.shape)}, expected {shapes[0]} and {shapes[1]}."
                )
        return [(np.asarray(k, "float32"), np.asarray(b, "float32")) for k, b in datasets]


def _from_array(array):
    # A Keras initializer returning the loaded values: the variables are created
    # holding them (no random init to overwrite; also fine in JAX stateless scopes).
    def initializer(shape, dtype=None):
        if tuple(shape) != array.shape:
            raise ValueError(f"Loaded array of shape {array.shape} cannot fill {tuple(shape)}.")
        return ops.cast(array, dtype or "float32")

    return initializer


@keras.saving.register_keras_serializable(package="t2t_image")
class PerceptualLoss(keras.layers.Layer):
    """LPIPS-style perceptual distance between two image batches, on frozen VGG16 features.

    The "baseline" variant of LPIPS (Zhang et al. 2018, Sec. 3, Eq. 1 without
    the learned per-channel weights ``w_l``), the perceptual reconstruction
    term of VQGAN (Esser et al. 2021, Sec. 3.1, "L_rec" with a perceptual
    loss). Both batches go through the convolutional part of VGG16
    (Simonyan & Zisserman 2015); at the end of each of the 5 stages
    (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) each feature vector is
    scaled to unit L2 norm over its channels, ``f / sqrt(sum_c f^2 + eps^2)``
    with ``eps = 1e-10``, and the distance is

        ``d(x, y) = sum_stages mean_{h,w} sum_c (f_x - f_y)^2``,

    per image. Features and the distance are computed in float32.

    Inputs on the [-1, 1] scale are mapped to the Caffe preprocessing the
    keras.applications VGG16 weights expect: ``(x + 1) * 127.5``, RGB -> BGR,
    minus the ImageNet BGR means (103.939, 116.779, 123.68).

    Weights. No weights are built in and nothing is ever downloaded: the
    VGG16 conv weights come only from ``weights_path``, an HDF5 file in one of
    two layouts, recognised by content (not by file name):

    * legacy Keras HDF5 weights, such as keras.applications' well-known
      ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` (or the file with
      the top, whose dense layers are ignored): root attribute
      ``layer_names``; groups ``block{s}_conv{i}`` whose attribute
      ``weight_names`` lists the kernel then the bias dataset;
    * Keras 3 ``.weights.h5`` written by ``save_weights(path)`` of
      ``keras.applications.VGG16(weights=None)`` (with or without the top)
      after loading weights into it: datasets
      ``layers/conv2d{,_1,...,_12}/vars/0`` (kernel) and ``.../vars/1`` (bias).

    Kernels are `[3, 3, in, out]` (channels last) with the standard VGG16
    widths 64, 64 | 128, 128 | 256 x 3 | 512 x 3 | 512 x 3 and expect the
    Caffe preprocessing above. The weights are frozen (non-trainable);
    gradients flow to the images.

    Args:
        weights_path: str or path-like, the VGG16 weights file (required).
        **kwargs: passed on to `keras.layers.Layer`.

    Raises:
        ValueError: without ``weights_path`` (the perceptual term is optional:
            leave the layer out, or give it weights), or when the file is
            missing or does not hold the VGG16 conv weights (the message
            names the path).

    Call arguments:
        inputs: float tensor `[batch, height, width, 3]`, RGB on [-1, 1];
            height and width at least 16 (4 max-pools precede stage 5).
        reconstructions: float tensor of the same shape.

    Returns:
        Float32 tensor `[batch]`, the distance per image (0 for identical
        images, symmetric).

    Example:
    >>> loss = PerceptualLoss(weights_path="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    >>> loss(images, reconstructions).shape  # images: [2, 32, 32, 3] on [-1, 1]
    (2,)
    """

    def __init__(self, weights_path=None, **kwargs):
        super().__init__(**kwargs)
        if weights_path is None:
            raise ValueError(
                "PerceptualLoss needs weights_path, a VGG16 conv weights file (e.g. "
                "keras.applications' vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5); "
                "none is built in and none is downloaded. The perceptual term is optional: "
                "train without it (perceptual weight 0) if no weights are at hand."
            )
        self.weights_path = os.fspath(weights_path)
        # Built (and the file read) on construction: a missing or mismatched file
        # fails here, and the loaded values never become constants of a traced
        # graph (which a first call inside tf.function would do).
        self.build((None, None, None, 3))

    def _check_shapes(self, inputs_shape, reconstructions_shape):
        shape = tuple(inputs_shape)
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(
                f"PerceptualLoss takes RGB images [batch, height, width, 3], got {shape}."
            )
        if any(d is not None and d < 16 for d in shape[1:3]):
            raise ValueError(
                "PerceptualLoss compares VGG16 features after 4 max-pools (5 stages): "
                f"images must be at least 16x16, got {shape}."
            )
        if reconstructions_shape is not None:
            other = tuple(reconstructions_shape)
            if len(other) != 4 or any(
                a is not None and b is not None and a != b for a, b in zip(shape, other)
            ):
                raise ValueError(
                    "PerceptualLoss compares images of one shape, got inputs "
                    f"{shape} and reconstructions {other}."
                )

    def build(self, inputs_shape, reconstructions_shape=None):
        self._check_shapes(inputs_shape, reconstructions_shape)
        arrays = _read_vgg16_weights(self.weights_path)
        self.convs = []
        shape = (None, None, None, 3)
        for name, (kernel, bias) in zip(_conv_names(), arrays):
            conv = keras.layers.Conv2D(
                kernel.shape[-1], 3, padding="same", activation="relu",
                data_format="channels_last", kernel_initializer=_from_array(kernel),
                bias_initializer=_from_array(bias), trainable=False,
                dtype=self.dtype_policy, name=name,
            )
            conv.build(shape)
            shape = (None, None, None, kernel.shape[-1])
            self.convs.append(conv)
        # tf.train.Checkpoint does not follow Keras-tracked lists (see ImageTransformer).
        for i, conv in enumerate(self.convs):
            setattr(self, f"_convs_{i}", conv)

    def _stage_features(self, images):
        # Preprocessing and features are kept in float32 (numerics of the distance).
        x = (ops.cast(images, "float32") + 1.0) * 127.5
        x = ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_BGR_MEAN, "float32")
        x = ops.cast(x, self.compute_dtype)
        features, convs = [], iter(self.convs)
        for stage, widths in enumerate(VGG16_STAGES):
            if stage:
                x = ops.max_pool(x, 2, strides=2, padding="valid", data_format="channels_last")
            for _ in widths:
                x = next(convs)(x)
            f = ops.cast(x, "float32")
            features.append(f * ops.rsqrt(ops.sum(f * f, axis=-1, keepdims=True)
                                          + NORM_EPSILON**2))
        return features

    def call(self, inputs, reconstructions):
        self._check_shapes(inputs.shape, reconstructions.shape)
        batch = ops.shape(inputs)[0]
        # One VGG pass over both batches.
        both = ops.concatenate(
            [ops.cast(inputs, "float32"), ops.cast(reconstructions, "float32")], axis=0
        )
        features = self._stage_features(both)
        # The distance is a loss: computed in float32 whatever the dtype policy.
        distance = 0.0
        for f in features:
            diff = f[:batch] - f[batch:]
            distance = distance + ops.mean(ops.sum(diff * diff, axis=-1), axis=(1, 2))
        return distance

    def compute_output_shape(self, inputs_shape, reconstructions_shape=None):
        return (inputs_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(weights_path=self.weights_path)
        return config
