"""Keras models: the decoder-only Image Transformer (and, later, Img2Img)."""

from t2t_image.models.image_transformer import ImageTransformer
from t2t_image.models.image_transformer import nats_to_bits_per_dim
from t2t_image.models.img2img_transformer import Img2ImgTransformer

__all__ = ["ImageTransformer", "Img2ImgTransformer", "nats_to_bits_per_dim"]
