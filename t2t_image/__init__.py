"""t2t_image: the Image Transformer (Parmar et al., ICML 2018) in TensorFlow 2 / Keras 3.

Layered package: ``ops`` (pure functions) -> ``layers`` -> ``models`` ->
``storage`` (the model directory on disk) -> (``data``, ``training``, ``sampling``,
``export``) -> ``cli``.
"""

__version__ = "0.1.0"
