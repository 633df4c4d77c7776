"""Keras layers of the Image Transformer and the VQ first stage (one public class per module)."""

from t2t_image.layers.image_transformer_block import ImageTransformerBlock
from t2t_image.layers.multi_head_attention import MultiHeadAttention
from t2t_image.layers.ordinal_pixel_embedding import OrdinalPixelEmbedding
from t2t_image.layers.pixel_embedding import PixelEmbedding
from t2t_image.layers.position_signal import PositionSignal
from t2t_image.layers.conv_decoder import ConvDecoder
from t2t_image.layers.conv_encoder import ConvEncoder
from t2t_image.layers.patch_discriminator import PatchDiscriminator
from t2t_image.layers.perceptual_loss import PerceptualLoss
from t2t_image.layers.residual_conv_block import ResidualConvBlock
from t2t_image.layers.vector_quantizer import VectorQuantizer

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "ImageTransformerBlock",
    "MultiHeadAttention",
    "OrdinalPixelEmbedding",
    "PatchDiscriminator",
    "PerceptualLoss",
    "PixelEmbedding",
    "PositionSignal",
    "ResidualConvBlock",
    "VectorQuantizer",
]
