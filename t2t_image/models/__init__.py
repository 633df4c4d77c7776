"""Keras models: the decoder-only Image Transformer (and, later, Img2Img)."""

from t2t_image.models.image_transformer import ImageTransformer
from t2t_image.models.image_transformer import nats_to_bits_per_dim

__all__ = ["ImageTransformer", "nats_to_bits_per_dim"]
