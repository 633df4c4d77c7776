"""Which compilation the train step uses: ``Trainer.jit_compile = "auto"``.

"auto" is XLA on GPUs and TPUs and the TF graph executor (no XLA) on CPUs.
Measured on an Intel Xeon with AVX512-BF16/AMX (TensorFlow 2.21, 2 cores; see
benchmarks/README.md, "Precision and compilation"):

* bfloat16: XLA:CPU lowers bfloat16 matmuls to its own (Eigen) kernels, not oneDNN:
  a chain of 2048^2 bfloat16 matmuls runs at 283 GFLOP/s under XLA against
  1,488 GFLOP/s through the graph executor's oneDNN kernels. A ``mixed_bfloat16``
  step of a 2-layer d 512 model without XLA is 2.35x (1D local) and 2.13x (2D local)
  the float32 XLA step; with XLA 0.92x and 0.98x.
* float32: without XLA the same model's step is 1.10x (1D) and 1.08x (2D) the XLA
  step, and the quickstart model (d 64) trains 500 steps in 269 s against 330 s
  with XLA (one core each, side by side).
* GPUs and TPUs: XLA (fuses the many small ops; TPUs need it).
"""

from __future__ import annotations

JIT_COMPILE_CHOICES = (True, False, "auto")


def accelerator_type(strategy="default"):
    """"TPU", "GPU" or "CPU": the device the train step will run on."""
    if strategy == "tpu":
        return "TPU"
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend().upper()
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def resolve_jit_compile(jit_compile, precision, device):
    """The effective XLA setting of a train step.

    Args:
        jit_compile: True, False or "auto".
        precision: the Keras dtype policy name (None means "float32").
        device: "CPU", "GPU" or "TPU".

    Returns:
        bool: True, False as given; for "auto", False on a CPU (the graph executor's
        oneDNN kernels are faster there, in bfloat16 by 2x), True otherwise.
    """
    if jit_compile not in JIT_COMPILE_CHOICES or (jit_compile in (0, 1) and
                                                  not isinstance(jit_compile, bool)):
        raise ValueError(f"Trainer.jit_compile must be True, False or \"auto\", got "
                         f"{jit_compile!r}.")
    if jit_compile != "auto":
        return jit_compile
    return device != "CPU"
