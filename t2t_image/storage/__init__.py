"""What lives on disk: the model directory and presets.

Checkpoint listing and reading (TF and npz), the run lock, run settings, the
model config and loading a trained model. The training loop writes through
this package; the sampler, exporter and presets read through it. It sits below
``t2t_image.training`` and never imports it.
"""
