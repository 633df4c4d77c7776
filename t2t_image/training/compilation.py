"""Which compilation the train step uses: ``Trainer.jit_compile = "auto"``.

Measured on an Intel Xeon with AVX512-BF16/AMX (TensorFlow 2.21, 2 cores; see
benchmarks/README.md, "Precision and compilation"):

* XLA:CPU lowers bfloat16 matmuls to its own (Eigen) kernels, not oneDNN: a chain of
  2048^2 bfloat16 matmuls runs at 276 GFLOP/s under XLA against 1,415 GFLOP/s
  through the TF graph executor's oneDNN kernels (float32: 287 vs 332; quiet machine). So on a CPU
  a ``mixed_bfloat16`` step runs without XLA.
* float32 on a CPU: XLA is as fast as the graph executor for 1D local attention and
  clearly faster for 2D local attention, so XLA.
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
        bool: True, False as given; for "auto", False only for ``mixed_bfloat16`` on a
        CPU (XLA:CPU has no oneDNN bfloat16 matmuls), True otherwise.
    """
    if jit_compile not in JIT_COMPILE_CHOICES or (jit_compile in (0, 1) and
                                                  not isinstance(jit_compile, bool)):
        raise ValueError(f"Trainer.jit_compile must be True, False or \"auto\", got "
                         f"{jit_compile!r}.")
    if jit_compile != "auto":
        return jit_compile
    return not (device == "CPU" and (precision or "float32") == "mixed_bfloat16")
