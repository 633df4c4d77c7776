"""Evaluation of trained models (super-resolution: bits/dim, consistency, sample grids,
bicubic consistency and the MS-SSIM copying check)."""

from t2t_image.evaluation.similarity import bicubic_consistency
from t2t_image.evaluation.similarity import bicubic_downsample
from t2t_image.evaluation.similarity import ms_ssim
from t2t_image.evaluation.similarity import nearest_training_ms_ssim
from t2t_image.evaluation.super_resolution import DEFAULT_TEMPERATURES
from t2t_image.evaluation.super_resolution import box_downsample
from t2t_image.evaluation.super_resolution import consistency
from t2t_image.evaluation.super_resolution import downsampling_factor
from t2t_image.evaluation.super_resolution import evaluate_super_resolution
from t2t_image.evaluation.super_resolution import make_sample_fn
from t2t_image.evaluation.super_resolution import nearest_upsample
from t2t_image.evaluation.super_resolution import nll_bits_per_dim
from t2t_image.evaluation.super_resolution import sample_grid
from t2t_image.evaluation.super_resolution import write_sample_grid

__all__ = [
    "DEFAULT_TEMPERATURES",
    "bicubic_consistency",
    "bicubic_downsample",
    "box_downsample",
    "consistency",
    "downsampling_factor",
    "evaluate_super_resolution",
    "make_sample_fn",
    "ms_ssim",
    "nearest_training_ms_ssim",
    "nearest_upsample",
    "nll_bits_per_dim",
    "sample_grid",
    "write_sample_grid",
]
