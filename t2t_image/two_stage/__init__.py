"""Two-stage models (Esser et al. 2021, "Taming Transformers"): a VQ first stage and a prior over its codes.

``make_code_dataset``: images tokenized by a trained first stage, cached;
``sample_two_stage``: code grids from the prior (sliding-window sampling for
grids larger than the training size) decoded by the first stage;
``export_two_stage_saved_model``: both stages as one SavedModel.
"""

from t2t_image.two_stage.code_dataset import make_code_dataset
from t2t_image.two_stage.export import export_two_stage_saved_model
from t2t_image.two_stage.sampler import check_two_stage
from t2t_image.two_stage.sampler import grid_size
from t2t_image.two_stage.sampler import sample_two_stage

__all__ = [
    "check_two_stage",
    "export_two_stage_saved_model",
    "grid_size",
    "make_code_dataset",
    "sample_two_stage",
]
