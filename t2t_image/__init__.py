"""t2t_image: the Image Transformer (Parmar et al., ICML 2018) in TensorFlow 2 / Keras 3.

Layered package: ``ops`` (pure functions) -> ``layers`` -> ``models`` ->
``storage`` (the model directory on disk) -> (``data``, ``training``, ``sampling``,
``export``) -> ``cli``.

    import t2t_image
    model = t2t_image.from_preset("cifar10_32_uncond")   # a trained model, ready to sample
"""

__version__ = "0.1.0"


def from_preset(name_or_path):
    """Loads a preset's model by name (see ``presets/``) or folder path.

    The preset's files are checked against its recorded fingerprint first; a
    damaged or modified preset raises ``t2t_image.storage.presets.PresetError``
    naming it. For the prior of a two-stage model use ``load_preset``, which
    also returns the first stage.

    Returns:
        The built Keras model (float32) with the preset's weights.
    """
    return load_preset(name_or_path).model


def load_preset(name_or_path):
    """Loads a preset: ``Preset(name, folder, model, first_stage, metadata)``."""
    from t2t_image.storage import presets

    return presets.load(name_or_path)
