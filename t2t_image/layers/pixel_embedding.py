"""Channel-specific pixel-intensity embedding for the categorical likelihood."""

import keras
import numpy as np
from keras import ops

from t2t_image.layers import initializers


def check_vocab_size(vocab_size):
    """Validates ``vocab_size``: an int >= 2 (values per channel of a categorical).

    Not a T2T function (T2T fixes 256 intensities); the number of classes of
    the categorical of Parmar et al. 2018, Sec. 3.2, or the codebook size K
    of a prior over VQ codes (Esser et al. 2021, Sec. 3.2).

    Args:
        vocab_size: the value to check.

    Returns:
        ``vocab_size`` as an int.

    Raises:
        ValueError: naming ``vocab_size`` and the value received.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
            or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got vocab_size={vocab_size!r}.")
    return int(vocab_size)


@keras.saving.register_keras_serializable(package="t2t_image")
class PixelEmbedding(keras.layers.Layer):
    """Embeds each sub-pixel intensity (or discrete code) with a channel-specific table.

    One table of ``vocab_size * num_channels`` rows: channel ``c`` with value
    ``v`` reads row ``v + vocab_size * c``. The table is scaled by ``sqrt(hidden_size)``
    (T2T's ``get_channel_embeddings``) and the channel embeddings of a pixel are
    interleaved along the width, so sub-pixel ``(y, x, c)`` lands at column
    ``num_channels * x + c`` of the output grid. Image Transformer, Section 3.1
    ("Inputs": the categorical input representation).

    Args:
        hidden_size: int, the embedding depth d.
        num_channels: int, channels per pixel (3 for RGB).
        vocab_size: int >= 2, values per channel: 256 for 8-bit intensities,
            the codebook size K for a prior over VQ codes (Esser et al. 2021).
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        targets: integer tensor `[batch, height, width, num_channels]` with
            values in ``0..vocab_size - 1``.

    Returns:
        Float tensor `[batch, height, num_channels * width, hidden_size]`.

    Example:
    >>> layer = PixelEmbedding(hidden_size=16)
    >>> layer(np.zeros((2, 4, 4, 3), "uint8")).shape
    (2, 4, 12, 16)
    """

    def __init__(self, hidden_size, num_channels=3, vocab_size=256, **kwargs):
        super().__init__(**kwargs)
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}.")
        if num_channels <= 0:
            raise ValueError(f"num_channels must be positive, got {num_channels}.")
        self.hidden_size = hidden_size
        self.num_channels = num_channels
        self.vocab_size = check_vocab_size(vocab_size)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.num_channels:
            raise ValueError(
                f"PixelEmbedding expects {self.num_channels} channels "
                f"(num_channels={self.num_channels}), got input shape {input_shape}."
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocab_size * self.num_channels, self.hidden_size),
            initializer=initializers.t2t_variance_scaling(),
        )

    def call(self, targets):
        ids = ops.cast(targets, "int32") + self.vocab_size * ops.arange(
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
        config.update(hidden_size=self.hidden_size, num_channels=self.num_channels,
                      vocab_size=self.vocab_size)
        return config
