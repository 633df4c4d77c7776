"""Channel-specific pixel-intensity embedding for the categorical likelihood."""

import keras
from keras import ops

from t2t_image.layers import initializers


@keras.saving.register_keras_serializable(package="t2t_image")
class PixelEmbedding(keras.layers.Layer):
    """Embeds each sub-pixel intensity with a channel-specific table.

    One table of ``256 * num_channels`` rows: channel ``c`` with value ``v``
    reads row ``v + 256 * c``. The table is scaled by ``sqrt(hidden_size)``
    (T2T's ``get_channel_embeddings``) and the channel embeddings of a pixel are
    interleaved along the width, so sub-pixel ``(y, x, c)`` lands at column
    ``num_channels * x + c`` of the output grid. Image Transformer, Section 3.1
    ("Inputs": the categorical input representation).

    Args:
        hidden_size: int, the embedding depth d.
        num_channels: int, channels per pixel (3 for RGB).
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        targets: integer tensor `[batch, height, width, num_channels]` with
            values in 0..255.

    Returns:
        Float tensor `[batch, height, num_channels * width, hidden_size]`.

    Example:
    >>> layer = PixelEmbedding(hidden_size=16)
    >>> layer(np.zeros((2, 4, 4, 3), "uint8")).shape
    (2, 4, 12, 16)
    """

    def __init__(self, hidden_size, num_channels=3, **kwargs):
        super().__init__(**kwargs)
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}.")
        if num_channels <= 0:
            raise ValueError(f"num_channels must be positive, got {num_channels}.")
        self.hidden_size = hidden_size
        self.num_channels = num_channels

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.num_channels:
            raise ValueError(
                f"PixelEmbedding expects {self.num_channels} channels "
                f"(num_channels={self.num_channels}), got input shape {input_shape}."
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(256 * self.num_channels, self.hidden_size),
            initializer=initializers.t2t_variance_scaling(),
        )

    def call(self, targets):
        ids = ops.cast(targets, "int32") + 256 * ops.arange(
            self.num_channels, dtype="int32"
        )
        table = ops.cast(self.embeddings, self.compute_dtype)
        emb = ops.take(table, ids, axis=0) * (float(self.hidden_size) ** 0.5)
        shape = ops.shape(emb)
        return ops.reshape(
            emb, (shape[0], shape[1], shape[2] * self.num_channels, self.hidden_size)
        )

    def compute_output_shape(self, input_shape):
        width = None if input_shape[2] is None else input_shape[2] * self.num_channels
        return (input_shape[0], input_shape[1], width, self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size, num_channels=self.num_channels)
        return config
