"""Export of trained models as TF SavedModels with serving signatures."""

from t2t_image.export.saved_model import export_saved_model

__all__ = ["export_saved_model"]
