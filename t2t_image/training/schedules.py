"""Learning-rate schedules of T2T's image models."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="t2t_image")
class NoamSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """T2T's "noam" schedule: linear warm-up, then decay with 1/sqrt(step).

    ``lr(step) = learning_rate * 10 * hidden_size**-0.5 *
    min((step + 1) * warmup_steps**-1.5, (step + 1)**-0.5)``, the form T2T's
    image hparams sets use with ``learning_rate_decay_scheme="noam"`` (the
    factor 10 keeps T2T's learning_rate values, e.g. 0.1 or 0.5, meaningful).
    Image Transformer, Section 5 (optimization follows Vaswani et al., 2017).

    Args:
        learning_rate: float, T2T's ``learning_rate`` hparam.
        hidden_size: int, the model depth d.
        warmup_steps: int, steps of linear warm-up.

    Example:
    >>> schedule = NoamSchedule(0.1, hidden_size=512, warmup_steps=4000)
    >>> float(schedule(3999))  # the peak
    0.000698...
    """

    def __init__(self, learning_rate, hidden_size, warmup_steps):
        if warmup_steps <= 0:
            raise ValueError(f"warmup_steps must be positive, got {warmup_steps}.")
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}.")
        self.learning_rate = learning_rate
        self.hidden_size = hidden_size
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        scale = self.learning_rate * 10.0 * self.hidden_size**-0.5
        return scale * ops.minimum(step * self.warmup_steps**-1.5, ops.rsqrt(step))

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "hidden_size": self.hidden_size,
            "warmup_steps": self.warmup_steps,
        }
