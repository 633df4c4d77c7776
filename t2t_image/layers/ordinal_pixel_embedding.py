"""Ordinal (real-valued) pixel input for the DMOL likelihood."""

import keras
from keras import ops

from t2t_image.layers import initializers


@keras.saving.register_keras_serializable(package="t2t_image")
class OrdinalPixelEmbedding(keras.layers.Layer):
    """Compresses the channels of each pixel into one position with a convolution.

    Intensities are mapped to ``x / 127.5 - 1``, laid out as a
    `[batch, height, num_channels * width, 1]` grid, and a 1 x num_channels
    convolution with stride num_channels and ReLU gives one d-dimensional
    vector per pixel (T2T's ``image_channel_compress_bottom``). Positions are
    pixels, not sub-pixels. Image Transformer, Section 3.1 (ordinal inputs for
    the discretized mixture of logistics).

    Args:
        hidden_size: int, output depth d.
        num_channels: int, channels per pixel (3 for RGB).
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        targets: integer tensor `[batch, height, width, num_channels]` in 0..255.

    Returns:
        Float tensor `[batch, height, width, hidden_size]`.

    Example:
    >>> layer = OrdinalPixelEmbedding(hidden_size=16)
    >>> layer(np.zeros((2, 4, 4, 3), "uint8")).shape
    (2, 4, 4, 16)
    """

    def __init__(self, hidden_size, num_channels=3, **kwargs):
        super().__init__(**kwargs)
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}.")
        self.hidden_size = hidden_size
        self.num_channels = num_channels

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.num_channels:
            raise ValueError(
                f"OrdinalPixelEmbedding expects {self.num_channels} channels "
                f"(num_channels={self.num_channels}), got input shape {input_shape}."
            )
        self.conv = keras.layers.Conv2D(
            self.hidden_size,
            kernel_size=(1, self.num_channels),
            strides=(1, self.num_channels),
            padding="valid",
            activation="relu",
            kernel_initializer=initializers.t2t_variance_scaling(),
            dtype=self.dtype_policy,
            name="conv_input",
        )
        width = None if input_shape[2] is None else input_shape[2] * self.num_channels
        self.conv.build((input_shape[0], input_shape[1], width, 1))

    def call(self, targets):
        x = ops.cast(targets, self.compute_dtype) / 127.5 - 1.0
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], shape[2] * self.num_channels, 1))
        return self.conv(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[2], self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size, num_channels=self.num_channels)
        return config
