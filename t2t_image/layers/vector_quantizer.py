"""Vector quantization with a learned codebook (VQ-VAE / VQGAN bottleneck)."""

import keras
from keras import ops

from t2t_image.ops.categorical import stateless_uniform

CODEBOOK_UPDATES = ("ema", "loss")


@keras.saving.register_keras_serializable(package="t2t_image")
class VectorQuantizer(keras.layers.Layer):
    """Maps each latent vector to its nearest codebook entry (straight-through).

    ``codes = argmin_k ||z - e_k||^2`` (distances expanded as ``||z||^2 -
    2 z.e_k + ||e_k||^2`` and computed in float32; ties go to the lowest
    index) and ``quantized = z + stop_gradient(e_codes - z)``: the forward
    value is the codebook entry, the backward pass copies the gradient of
    ``quantized`` to ``z`` unchanged. van den Oord et al. 2017 ("Neural
    Discrete Representation Learning", Sec. 3.1-3.2 and Appendix A.1 for the
    EMA update) as used by Esser et al. 2021 ("Taming Transformers", Sec. 3.1,
    Eq. 4).

    ``call`` never changes the layer's variables, so it can run per replica
    under ``tf.distribute``: it returns the batch statistics (``counts``,
    ``sums``), which the trainer all-reduces and passes to
    ``update_codebook`` together with candidate encoder outputs. That method:

    1. updates the usage EMA ``u <- d * u + (1 - d) * counts`` (both modes);
    2. for ``codebook_update="ema"``, updates ``N <- d * N + (1 - d) * counts``
       and ``m <- d * m + (1 - d) * sums`` and sets ``e_k = m_k / N~_k`` with
       the Laplace-smoothed counts ``N~_k = (N_k + eps) / (sum N + K eps) *
       sum N`` (as in Sonnet's ``VectorQuantizerEMA`` / VQ-VAE-2);
    3. restarts every dead code (``u_k < dead_code_threshold``, after step 1)
       to a row of ``candidates`` drawn uniformly with a stateless random
       index from ``seed``, and resets its ``u_k`` to the threshold (so the
       next update restarts it again unless that batch assigns it at least
       ``threshold`` vectors) and, for "ema", ``N_k = 1`` and ``m_k = e_k``.

    Initial state: ``u = 0`` (so with a positive threshold the first update
    restarts nearly every code to encoder outputs: a data-dependent codebook
    initialisation), ``N = 1`` and ``m = e`` (one pseudo-observation at each
    initial entry, so ``m / N~`` equals the codebook and unused codes stay put
    while their ``N_k`` decays). The codebook starts uniform in ``[-1/K, 1/K]``
    (Taming's initialisation).

    All state variables use ``aggregation="only_first_replica"``: an
    ``update_codebook`` called in a replica context keeps replica 0's result
    on every replica (candidates differ per replica; the all-reduced
    statistics do not).

    Args:
        codebook_size: int K, number of codebook entries.
        code_dim: int n_z, dimension of each entry (last axis of the input).
        commitment_cost: float beta >= 0. Not applied by this layer (its
            ``commitment_loss`` is unscaled); stored for the owning model.
        codebook_update: "ema" (exponential moving averages; the codebook is
            not trainable and ``codebook_loss`` is 0) or "loss" (the codebook
            is trainable through ``codebook_loss``).
        ema_decay: float in (0, 1), decay d of all moving averages.
        epsilon: float > 0, Laplace smoothing of the EMA counts.
        dead_code_threshold: float >= 0, usage-EMA level below which a code
            is restarted by ``update_codebook``; 0 disables restarts.
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor `[..., code_dim]`, e.g. `[batch, h, w, code_dim]`
            (under a mixed policy Keras autocasts it to the compute dtype
            first; the quantizer then works in float32).
        training: unused (accepted for API symmetry); the state only changes
            through ``update_codebook``.

    Returns:
        A dict:
        - ``quantized``: `inputs.shape`, compute dtype, straight-through.
        - ``codes``: int32 `inputs.shape[:-1]`.
        - ``codebook_loss``: float32 scalar, ``mean((sg(z) - e)^2)`` ("loss";
          0.0 for "ema").
        - ``commitment_loss``: float32 scalar, ``mean((z - sg(e))^2)`` (not
          multiplied by beta).
        - ``counts``: float32 `[K]`, how many vectors chose each code.
        - ``sums``: float32 `[K, code_dim]`, per-code sums of the inputs
          (no gradient).

    Example:
    >>> vq = VectorQuantizer(codebook_size=16, code_dim=4)
    >>> out = vq(np.zeros((2, 3, 3, 4), "float32"))
    >>> out["codes"].shape, out["counts"].shape
    ((2, 3, 3), (16,))
    """

    def __init__(
        self,
        codebook_size,
        code_dim,
        commitment_cost=0.25,
        codebook_update="ema",
        ema_decay=0.99,
        epsilon=1e-5,
        dead_code_threshold=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("codebook_size", codebook_size), ("code_dim", code_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not commitment_cost >= 0:
            raise ValueError(f"commitment_cost must be >= 0, got {commitment_cost!r}.")
        if codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(
                f"codebook_update must be one of {CODEBOOK_UPDATES}, got {codebook_update!r}."
            )
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay!r}.")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}.")
        if not dead_code_threshold >= 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold!r}.")
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.commitment_cost = commitment_cost
        self.codebook_update = codebook_update
        self.ema_decay = ema_decay
        self.epsilon = epsilon
        self.dead_code_threshold = dead_code_threshold

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.code_dim:
            raise ValueError(
                f"VectorQuantizer expects inputs [..., {self.code_dim}] (code_dim="
                f"{self.code_dim}), got input shape {tuple(input_shape)}."
            )
        k = self.codebook_size
        state = dict(dtype="float32", aggregation="only_first_replica")
        self.codebook = self.add_weight(
            name="codebook",
            shape=(k, self.code_dim),
            initializer=keras.initializers.RandomUniform(-1.0 / k, 1.0 / k),
            trainable=self.codebook_update == "loss",
            **state,
        )
        self.usage = self.add_weight(
            name="usage", shape=(k,), initializer="zeros", trainable=False, **state
        )
        if self.codebook_update == "ema":
            self.ema_counts = self.add_weight(
                name="ema_counts", shape=(k,), initializer="ones", trainable=False, **state
            )
            codebook = self.codebook
            self.ema_sums = self.add_weight(
                name="ema_sums",
                shape=(k, self.code_dim),
                # One pseudo-observation per code: m / N starts equal to the codebook.
                initializer=lambda shape, dtype=None: ops.cast(
                    ops.convert_to_tensor(codebook), dtype or "float32"),
                trainable=False,
                **state,
            )

    def call(self, inputs, training=None):
        # Distances, losses and statistics in float32 whatever the policy
        # (the ||z||^2 - 2 z.e + ||e||^2 expansion cancels badly in low precision).
        z = ops.cast(inputs, "float32")
        flat = ops.reshape(z, (-1, self.code_dim))
        codebook = ops.convert_to_tensor(self.codebook)
        codebook = ops.cast(codebook, "float32")
        distances = (
            ops.sum(ops.square(flat), axis=1, keepdims=True)
            - 2.0 * ops.matmul(flat, ops.transpose(codebook))
            + ops.sum(ops.square(codebook), axis=1)[None, :]
        )
        flat_codes = ops.cast(ops.argmin(distances, axis=1), "int32")
        nearest = ops.reshape(ops.take(codebook, flat_codes, axis=0), ops.shape(z))
        codes = ops.reshape(flat_codes, ops.shape(z)[:-1])
        commitment_loss = ops.mean(ops.square(z - ops.stop_gradient(nearest)))
        if self.codebook_update == "loss":
            codebook_loss = ops.mean(ops.square(ops.stop_gradient(z) - nearest))
        else:
            codebook_loss = ops.zeros((), "float32")
        # Straight-through z + sg(e - z), written so that the forward value is exactly e.
        quantized = ops.stop_gradient(nearest) + (z - ops.stop_gradient(z))
        one_hot = ops.one_hot(flat_codes, self.codebook_size, dtype="float32")
        counts = ops.sum(one_hot, axis=0)
        sums = ops.matmul(ops.transpose(one_hot), ops.stop_gradient(flat))
        return {
            "quantized": ops.cast(quantized, self.compute_dtype),
            "codes": codes,
            "codebook_loss": codebook_loss,
            "commitment_loss": commitment_loss,
            "counts": ops.stop_gradient(counts),
            "sums": sums,
        }

    def lookup(self, codes):
        """Codebook entries of integer ``codes`` `[...]`: `[..., code_dim]`, compute dtype."""
        table = ops.cast(ops.convert_to_tensor(self.codebook), self.compute_dtype)
        return ops.take(table, ops.cast(codes, "int32"), axis=0)

    def codebook_usage(self):
        """Effective fraction of the codebook in use, a float32 scalar in [0, 1].

        ``exp(H(p)) / K`` with ``p = usage / sum(usage)`` the normalised usage
        EMA: the perplexity of code assignments divided by the codebook size
        (1 when all codes are used equally, 1/K when one code takes
        everything; 0 before any update). A threshold count would read 1
        right after every update, since restarted codes sit at the threshold;
        ``update_codebook``'s return value counts the dead codes instead.
        """
        # Entropy in float32 (log of small probabilities).
        usage = ops.cast(ops.convert_to_tensor(self.usage), "float32")
        total = ops.sum(usage)
        p = usage / ops.maximum(total, 1e-30)
        positive = p > 0.0
        entropy = -ops.sum(ops.where(positive, p * ops.log(ops.where(positive, p, 1.0)), 0.0))
        return ops.where(total > 0.0, ops.exp(entropy) / self.codebook_size, 0.0)

    def update_codebook(self, counts, sums, candidates, seed):
        """Applies one step of the EMA codebook update and restarts dead codes.

        See the class docstring for the formulas. Branches only on the
        (static) configuration, so it compiles with XLA; call it once per
        training step after the optimizer step, with statistics summed over
        all replicas.

        Args:
            counts: float `[K]`, code counts of the (global) batch (``call``'s
                ``counts``).
            sums: float `[K, code_dim]`, per-code input sums (``call``'s ``sums``).
            candidates: float `[N, code_dim]`, N >= 1 encoder outputs to
                restart dead codes with (e.g. the batch's flattened latents).
            seed: int32/int64 tensor or tuple of shape [2] (or a Python int),
                the stateless seed of the restart indices; vary it per step.

        Returns:
            int32 scalar: the number of codes restarted.
        """
        decay = float(self.ema_decay)
        counts = ops.cast(counts, "float32")
        sums = ops.cast(sums, "float32")
        candidates = ops.reshape(ops.cast(candidates, "float32"), (-1, self.code_dim))
        usage = decay * ops.convert_to_tensor(self.usage) + (1.0 - decay) * counts
        codebook = ops.convert_to_tensor(self.codebook)
        if self.codebook_update == "ema":
            # EMA and Laplace smoothing in float32 (ratios of small counts).
            ema_counts = decay * ops.convert_to_tensor(self.ema_counts) + (1.0 - decay) * counts
            ema_sums = decay * ops.convert_to_tensor(self.ema_sums) + (1.0 - decay) * sums
            total = ops.sum(ema_counts)
            smoothed = (
                (ema_counts + self.epsilon)
                / (total + self.codebook_size * self.epsilon)
                * total
            )
            codebook = ema_sums / smoothed[:, None]
        if self.dead_code_threshold > 0:
            threshold = float(self.dead_code_threshold)
            dead = usage < threshold
            num_candidates = ops.shape(candidates)[0]
            uniform = stateless_uniform((self.codebook_size,), seed)
            index = ops.cast(
                ops.floor(uniform * ops.cast(num_candidates, "float32")), "int32"
            )
            index = ops.clip(index, 0, ops.cast(num_candidates, "int32") - 1)
            restart = ops.take(candidates, index, axis=0)
            codebook = ops.where(dead[:, None], restart, codebook)
            usage = ops.where(dead, threshold, usage)
            if self.codebook_update == "ema":
                ema_counts = ops.where(dead, 1.0, ema_counts)
                ema_sums = ops.where(dead[:, None], restart, ema_sums)
            num_restarted = ops.sum(ops.cast(dead, "int32"))
        else:
            num_restarted = ops.zeros((), "int32")
        self.usage.assign(usage)
        self.codebook.assign(codebook)
        if self.codebook_update == "ema":
            self.ema_counts.assign(ema_counts)
            self.ema_sums.assign(ema_sums)
        return num_restarted

    def compute_output_shape(self, input_shape):
        return {
            "quantized": tuple(input_shape),
            "codes": tuple(input_shape[:-1]),
            "codebook_loss": (),
            "commitment_loss": (),
            "counts": (self.codebook_size,),
            "sums": (self.codebook_size, self.code_dim),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            commitment_cost=self.commitment_cost,
            codebook_update=self.codebook_update,
            ema_decay=self.ema_decay,
            epsilon=self.epsilon,
            dead_code_threshold=self.dead_code_threshold,
        )
        return config
