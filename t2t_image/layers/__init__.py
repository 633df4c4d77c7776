"""Keras layers of the Image Transformer (one public class per module)."""

from t2t_image.layers.image_transformer_block import ImageTransformerBlock
from t2t_image.layers.multi_head_attention import MultiHeadAttention
from t2t_image.layers.ordinal_pixel_embedding import OrdinalPixelEmbedding
from t2t_image.layers.pixel_embedding import PixelEmbedding
from t2t_image.layers.position_signal import PositionSignal

__all__ = [
    "ImageTransformerBlock",
    "MultiHeadAttention",
    "OrdinalPixelEmbedding",
    "PixelEmbedding",
    "PositionSignal",
]
