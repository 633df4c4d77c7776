"""Pure functions with T2T's semantics: attention patterns, position signals, likelihoods.

Each function is written with ``keras.ops`` (TF only where isolated and
commented), compiles with XLA and can be checked function-for-function
against Tensor2Tensor's ``common_attention`` / ``common_layers``.
"""

from t2t_image.ops.categorical import categorical_log_prob
from t2t_image.ops.categorical import sample_categorical
from t2t_image.ops.categorical import stateless_uniform
from t2t_image.ops.dmol import discretized_mix_logistic_loss
from t2t_image.ops.dmol import sample_discretized_mix_logistic
from t2t_image.ops.dot_product_attention import dot_product_attention
from t2t_image.ops.local_attention_1d import masked_local_attention_1d
from t2t_image.ops.local_attention_2d import block_raster_order
from t2t_image.ops.local_attention_2d import local_attention_2d
from t2t_image.ops.local_attention_2d import masked_local_attention_2d
from t2t_image.ops.local_attention_2d import right_shift_block_raster
from t2t_image.ops.local_attention_2d import right_shift_blockwise
from t2t_image.ops.timing_signal import add_timing_signal_nd
from t2t_image.ops.timing_signal import get_timing_signal_nd
from t2t_image.ops.gan_losses import adaptive_weight
from t2t_image.ops.gan_losses import discriminator_factor
from t2t_image.ops.gan_losses import generator_loss
from t2t_image.ops.gan_losses import hinge_discriminator_loss
from t2t_image.ops.gan_losses import vanilla_discriminator_loss
from t2t_image.ops.image_metrics import psnr

__all__ = [
    "adaptive_weight",
    "add_timing_signal_nd",
    "block_raster_order",
    "categorical_log_prob",
    "discretized_mix_logistic_loss",
    "discriminator_factor",
    "dot_product_attention",
    "generator_loss",
    "get_timing_signal_nd",
    "hinge_discriminator_loss",
    "local_attention_2d",
    "masked_local_attention_1d",
    "masked_local_attention_2d",
    "psnr",
    "right_shift_block_raster",
    "right_shift_blockwise",
    "sample_categorical",
    "sample_discretized_mix_logistic",
    "stateless_uniform",
    "vanilla_discriminator_loss",
]
