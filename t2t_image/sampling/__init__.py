"""Sampling from Image Transformers.

``sample``: the fast sampler (cached incremental decoding, one compiled loop);
``reference_sample``: the slow reference that recomputes the model at every
step (T2T's way); ``sample_sliding_window``: canvases larger than the
training size (Taming Transformers' sliding attention window); ``image_grid`` /
``write_image_grid``: PNG grids of samples; ``run_sampler`` / ``write_grid``:
the sampling job of ``t2t-image-sampler`` (checked arguments, batches,
progress, a grid that states its layout; ``t2t_image.sampling.job``).
"""

from t2t_image.sampling.arguments import SamplingArgumentError
from t2t_image.sampling.common import generation_order, step_seed
from t2t_image.sampling.grids import image_grid, sample_grid_for_summary, write_image_grid
from t2t_image.sampling.job import run_sampler, write_grid
from t2t_image.sampling.reference_sampler import reference_sample
from t2t_image.sampling.sampler import sample
from t2t_image.sampling.sliding_window import sample_sliding_window

__all__ = [
    "SamplingArgumentError",
    "generation_order",
    "image_grid",
    "reference_sample",
    "run_sampler",
    "sample",
    "sample_sliding_window",
    "sample_grid_for_summary",
    "step_seed",
    "write_grid",
    "write_image_grid",
]
