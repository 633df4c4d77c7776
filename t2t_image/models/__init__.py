"""Keras models: the Image Transformer, its encoder-decoder (Img2Img), and the VQ first stage."""

from t2t_image.models.image_transformer import ImageTransformer
from t2t_image.models.image_transformer import nats_to_bits_per_dim
from t2t_image.models.img2img_transformer import Img2ImgTransformer
from t2t_image.models.vq_autoencoder import VQAutoencoder

__all__ = [
    "ImageTransformer",
    "Img2ImgTransformer",
    "VQAutoencoder",
    "nats_to_bits_per_dim",
]
