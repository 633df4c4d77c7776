"""Training the first stage of a two-stage model: a VQ autoencoder, optionally a VQGAN.

Same run directory, checkpoints, guards, strategies and TensorBoard output as
``Trainer``; a different objective (Esser et al. 2021, "Taming Transformers",
Eq. 4-7): reconstruction (L1, optionally L2 and a perceptual distance) plus
the vector-quantization losses, and from ``discriminator_start_step`` on an
adversarial term weighted adaptively by the ratio of the reconstruction and
adversarial gradient norms at the decoder's last layer. The codebook's EMA
statistics (``codebook_update="ema"``) are summed over replicas before the
update, so every replica applies the same codebook.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from t2t_image.ops import gan_losses
from t2t_image.ops.image_metrics import psnr
from t2t_image.training import preemption
from t2t_image.training.trainer import Trainer

DISCRIMINATOR_LOSSES = ("hinge", "vanilla")


def to_uint8_images(images):
    """[-1, 1] float images -> int32 0..255 (clipped, rounded)."""
    return tf.cast(tf.round(tf.clip_by_value((images + 1.0) * 127.5, 0.0, 255.0)), tf.int32)


def bicubic_baseline(targets, factor):
    """The image from its ``factor``-times smaller area downsample, upsampled bicubically.

    The baseline a first stage with downsampling ``factor`` must beat: the
    same number of spatial positions, stored as pixels instead of codes.
    """
    height, width = targets.shape[1], targets.shape[2]
    small = tf.image.resize(tf.cast(targets, tf.float32), [height // factor, width // factor],
                            method="area")
    big = tf.image.resize(small, [height, width], method="bicubic")
    return tf.cast(tf.round(tf.clip_by_value(big, 0.0, 255.0)), tf.int32)


class FirstStageTrainer(Trainer):
    """Trains a ``VQAutoencoder`` (and optionally a patch discriminator) in ``model_dir``.

    Args:
        model_dir, model_fn, train_dataset_fn, eval_dataset_fn: as ``Trainer``;
            ``model_fn`` builds a ``t2t_image.models.VQAutoencoder``.
        learning_rate: float, constant Adam learning rate of both networks.
        adam_beta1, adam_beta2, adam_epsilon: Adam settings (VQGAN: 0.5, 0.9).
        l1_weight: float, weight of the mean absolute error on the [-1, 1] scale.
        l2_weight: float, weight of the mean squared error.
        perceptual_weight: float, weight of the LPIPS-style distance (0: off).
        perceptual_weights_path: str, the VGG16 weights file the perceptual
            distance needs (``t2t_image.layers.PerceptualLoss``); required when
            ``perceptual_weight > 0``. Nothing is ever downloaded.
        discriminator_fn: callable returning a discriminator (e.g.
            ``@t2t_image.PatchDiscriminator``), or None for no adversarial loss.
        discriminator_start_step: int, the step from which the adversarial
            terms are on (VQGAN's ``disc_start``).
        discriminator_weight: float, multiplies the adaptive weight (VQGAN: 0.8).
        discriminator_factor: float, VQGAN's ``disc_factor``.
        discriminator_loss: "hinge" or "vanilla".
        **kwargs: the remaining ``Trainer`` settings (steps, checkpoints,
            logging, strategy, precision, seed, ...). ``warmup_steps`` is unused.
    """

    EVAL_SUMMARIES = ("psnr", "bicubic_psnr", "l1", "codebook_usage", "perplexity")
    MULTI_WORKER = False  # its steps and evaluation are not split over workers (untested)

    def __init__(
        self,
        model_dir,
        model_fn,
        train_dataset_fn,
        eval_dataset_fn=None,
        learning_rate=2e-4,
        adam_beta1=0.5,
        adam_beta2=0.9,
        adam_epsilon=1e-8,
        l1_weight=1.0,
        l2_weight=0.0,
        perceptual_weight=0.0,
        perceptual_weights_path=None,
        discriminator_fn=None,
        discriminator_start_step=0,
        discriminator_weight=0.8,
        discriminator_factor=1.0,
        discriminator_loss="hinge",
        **kwargs,
    ):
        super().__init__(
            model_dir, model_fn, train_dataset_fn, eval_dataset_fn,
            learning_rate=learning_rate, adam_beta1=adam_beta1, adam_beta2=adam_beta2,
            adam_epsilon=adam_epsilon, **kwargs,
        )
        for name, value in (("l1_weight", l1_weight), ("l2_weight", l2_weight),
                            ("perceptual_weight", perceptual_weight),
                            ("discriminator_weight", discriminator_weight),
                            ("discriminator_factor", discriminator_factor)):
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"FirstStageTrainer.{name} must be a number >= 0, got {value!r}.")
        if l1_weight + l2_weight + perceptual_weight <= 0:
            raise ValueError("FirstStageTrainer needs a reconstruction loss: l1_weight, l2_weight "
                             "and perceptual_weight are all 0.")
        if perceptual_weight > 0 and not perceptual_weights_path:
            raise ValueError(
                f"FirstStageTrainer.perceptual_weight={perceptual_weight} needs "
                "perceptual_weights_path (a VGG16 weights file; nothing is downloaded).")
        if not isinstance(discriminator_start_step, int) or discriminator_start_step < 0:
            raise ValueError("FirstStageTrainer.discriminator_start_step must be an int >= 0, "
                             f"got {discriminator_start_step!r}.")
        if discriminator_loss not in DISCRIMINATOR_LOSSES:
            raise ValueError(f"FirstStageTrainer.discriminator_loss must be one of "
                             f"{DISCRIMINATOR_LOSSES}, got {discriminator_loss!r}.")
        self.l1_weight = float(l1_weight)
        self.l2_weight = float(l2_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual_weights_path = perceptual_weights_path
        self.discriminator_fn = discriminator_fn
        self.discriminator_start_step = discriminator_start_step
        self.discriminator_weight = float(discriminator_weight)
        self.discriminator_factor = float(discriminator_factor)
        self.discriminator_loss = discriminator_loss

    # ------------------------------------------------------------------ setup
    def _build_optimizers(self):
        from t2t_image.layers import PerceptualLoss  # only when the loss is used

        model = self.model
        if not hasattr(model, "update_codebook") or not hasattr(model, "last_layer_kernel"):
            raise ValueError(f"FirstStageTrainer trains a VQAutoencoder; model_fn built "
                             f"{type(model).__name__}.")
        policy = self.precision or "float32"
        images = (None, model.image_height, model.image_width, model.num_channels)

        def adam():
            optimizer = keras.optimizers.Adam(
                learning_rate=self.learning_rate, beta_1=self.adam_beta1,
                beta_2=self.adam_beta2, epsilon=self.adam_epsilon,
                global_clipnorm=self.clip_gradient_norm or None,
            )
            if policy == "mixed_float16":
                raise ValueError("FirstStageTrainer.precision='mixed_float16' is not supported "
                                 "(no loss scaling of the two losses); use 'mixed_bfloat16'.")
            return optimizer

        self.optimizer = adam()
        self.optimizer.build(model.trainable_variables)
        self.discriminator = self.discriminator_optimizer = None
        if self.discriminator_fn is not None:
            self.discriminator = self.discriminator_fn(dtype=policy)
            self.discriminator.build(images)
            self.discriminator_optimizer = adam()
            self.discriminator_optimizer.build(self.discriminator.trainable_variables)
        self.perceptual = None
        if self.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(weights_path=self.perceptual_weights_path)
            self.perceptual.build(images)
        kernel = model.last_layer_kernel
        self._last_layer_index = next(
            i for i, v in enumerate(model.trainable_variables) if v is kernel)

    def _checkpoint_objects(self):
        objects = {"model": self.model, "optimizer": self.optimizer}
        if self.discriminator is not None:
            objects["discriminator"] = self.discriminator
            objects["discriminator_optimizer"] = self.discriminator_optimizer
        return objects

    # ------------------------------------------------------------------- steps
    def _reconstruction_loss(self, x, rec):
        """Per-image reconstruction loss `[batch]`, float32 (losses are numerics-sensitive)."""
        x, rec = tf.cast(x, tf.float32), tf.cast(rec, tf.float32)
        loss = self.l1_weight * tf.reduce_mean(tf.abs(x - rec), axis=[1, 2, 3])
        if self.l2_weight:
            loss += self.l2_weight * tf.reduce_mean(tf.square(x - rec), axis=[1, 2, 3])
        if self.perceptual is not None:
            loss += self.perceptual_weight * tf.cast(self.perceptual(x, rec), tf.float32)
        return loss

    def _discriminator_loss(self, real_logits, fake_logits):
        if self.discriminator_loss == "hinge":
            return gan_losses.hinge_discriminator_loss(real_logits, fake_logits)
        return gan_losses.vanilla_discriminator_loss(real_logits, fake_logits)

    def _make_train_step(self):
        model, strategy, disc = self.model, self.strategy, self.discriminator
        global_batch = self.global_batch_size
        replicas = float(strategy.num_replicas_in_sync)

        def gradient(tape, loss, variables):
            # Zeros where a loss does not reach a variable (e.g. the adversarial term and
            # the codebook; Keras variables' string dtypes rule out
            # tf.UnconnectedGradients.ZERO), and dense gradients: the codebook's gather
            # yields IndexedSlices with repeated rows, which Keras's Adam would square
            # before summing them (a wrong second moment).
            grads = tape.gradient(loss, variables)
            return [tf.zeros_like(v.value) if g is None else tf.convert_to_tensor(g)
                    for g, v in zip(grads, variables)]

        def compute(features):
            x = tf.cast(features["targets"], tf.float32) / 127.5 - 1.0
            with tf.GradientTape(persistent=True) as tape:
                out = model(features, training=True)
                rec = out["reconstruction"]
                per_image = self._reconstruction_loss(x, rec)
                rec_loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch)
                vq_loss = (tf.cast(out["codebook_loss"], tf.float32)
                           + tf.cast(out["commitment_loss"], tf.float32)) / replicas
                nll_loss = rec_loss + vq_loss
                g_loss = tf.zeros([])
                if disc is not None:
                    g_loss = gan_losses.generator_loss(disc(rec, training=True)) / replicas
            variables = model.trainable_variables
            g_rec = gradient(tape, nll_loss, variables)
            g_gan = gradient(tape, g_loss, variables)
            del tape
            g_disc, d_loss = [], tf.zeros([])
            if disc is not None:
                with tf.GradientTape() as tape:
                    d_loss = self._discriminator_loss(
                        disc(x, training=True), disc(tf.stop_gradient(rec), training=True)
                    ) / replicas
                g_disc = gradient(tape, d_loss, disc.trainable_variables)
            stats = {"counts": out["counts"], "sums": out["sums"]}
            return (g_rec, g_gan, g_disc, stats, out["latents"],
                    {"rec_loss": rec_loss, "vq_loss": vq_loss, "g_loss": g_loss,
                     "d_loss": d_loss})

        if self.jit_compile:  # XLA for the forward and backward passes
            compute = tf.function(compute, jit_compile=True)

        def replica_step(features):
            g_rec, g_gan, g_disc, stats, latents, losses = compute(features)
            ctx = tf.distribute.get_replica_context()
            # Everything is summed over replicas: gradients of the global-batch
            # losses and the codebook statistics of the global batch.
            g_rec, g_gan, g_disc, stats, losses = ctx.all_reduce(
                "sum", (g_rec, g_gan, g_disc, stats, losses))
            # Dead codes restart to latents of the whole global batch (in batch order),
            # not of replica 0's share: the same restarts whatever the replica count.
            latents = ctx.all_gather(latents, axis=0)
            return g_rec, g_gan, g_disc, stats, latents, losses

        def first(value):
            return strategy.experimental_local_results(value)[0]

        @tf.function
        def train_step(iterator):
            features = next(iterator)
            result = strategy.run(replica_step, args=(features,))
            g_rec, g_gan, g_disc, stats, latents, losses = tf.nest.map_structure(first, result)
            metrics = dict(losses)
            grads = g_rec
            if disc is not None:
                i = self._last_layer_index
                weight = self.discriminator_weight * gan_losses.adaptive_weight(
                    tf.linalg.norm(g_rec[i]), tf.linalg.norm(g_gan[i]))
                factor = gan_losses.discriminator_factor(
                    self.step, self.discriminator_start_step, self.discriminator_factor)
                weight = tf.cast(weight, tf.float32)
                factor = tf.cast(factor, tf.float32)
                grads = [r + factor * weight * g for r, g in zip(g_rec, g_gan)]
                # Before the start step the discriminator loss is multiplied by 0 too.
                self.discriminator_optimizer.apply(
                    [factor * g for g in g_disc], disc.trainable_variables)
                metrics["adaptive_weight"] = weight
                metrics["discriminator_factor"] = factor
                metrics["loss"] = (losses["rec_loss"] + losses["vq_loss"]
                                   + factor * weight * losses["g_loss"])
            else:
                metrics["loss"] = losses["rec_loss"] + losses["vq_loss"]
            metrics["gradient_norm"] = tf.linalg.global_norm(grads)
            self.optimizer.apply(grads, model.trainable_variables)
            model.update_codebook(
                {"counts": stats["counts"], "sums": stats["sums"], "latents": latents},
                seed=tf.stack([tf.constant(self.seed, tf.int64), self.step]))
            self.step.assign_add(1)
            return metrics

        return train_step

    def _train_scalars(self, step, metrics):
        scalars = dict(metrics)
        scalars["learning_rate"] = self.learning_rate
        return scalars

    def _evaluate_split(self, distributed_dataset):
        """Reconstruction quality over the whole split: PSNR, L1, codebook use."""
        model, strategy = self.model, self.strategy
        factor = model.downsample_factor

        def replica_step(features):
            targets = tf.cast(features["targets"], tf.int32)
            out = model(features, training=False)
            rec = tf.cast(out["reconstruction"], tf.float32)
            x = tf.cast(targets, tf.float32) / 127.5 - 1.0
            return {
                "psnr": tf.reduce_sum(psnr(targets, to_uint8_images(rec))),
                "bicubic_psnr": tf.reduce_sum(psnr(targets, bicubic_baseline(targets, factor))),
                "l1": tf.reduce_sum(tf.reduce_mean(tf.abs(x - rec), axis=[1, 2, 3])),
                "count": tf.cast(tf.shape(targets)[0], tf.float32),
                "code_counts": tf.cast(out["counts"], tf.float32),
            }

        @tf.function
        def eval_step(features):
            out = strategy.run(replica_step, args=(features,))
            return tf.nest.map_structure(lambda v: strategy.reduce("sum", v, axis=None), out)

        totals = None
        for batch in distributed_dataset:
            preemption.raise_if_stop_requested(
                "Stopped the evaluation; eval_results.json was not written.")
            out = {k: np.asarray(v, np.float64) for k, v in eval_step(batch).items()}
            totals = out if totals is None else {k: totals[k] + out[k] for k in totals}
        if totals is None or totals["count"] == 0:
            raise ValueError("the evaluation dataset is empty.")
        count = totals["count"]
        probs = totals["code_counts"] / totals["code_counts"].sum()
        entropy = -float(np.sum(probs[probs > 0] * np.log(probs[probs > 0])))
        return {
            "num_examples": int(count),
            "psnr": float(totals["psnr"] / count),
            "bicubic_psnr": float(totals["bicubic_psnr"] / count),
            "l1": float(totals["l1"] / count),
            # Fraction of the codebook used at least once on the split.
            "codebook_usage": float(np.mean(totals["code_counts"] > 0)),
            "perplexity": math.exp(entropy),
        }

    def write_samples(self, step):
        """Writes originals above their reconstructions to TensorBoard and samples/step_N.png."""
        import os

        from t2t_image.sampling import image_grid, write_image_grid
        from t2t_image.sampling.grids import VIEWABLE_TILE

        if not self.is_chief or self.eval_dataset is None:
            return
        batch = next(iter(self.eval_dataset))
        targets = batch["targets"][: self.num_samples]
        rec = to_uint8_images(self.model({"targets": targets}, training=False)["reconstruction"])
        images = np.concatenate([np.asarray(targets, np.int32), np.asarray(rec)], axis=0)
        grid = image_grid(images, num_columns=len(targets), min_tile_size=VIEWABLE_TILE)
        _, eval_writer = self._summary_writers()
        with eval_writer.as_default(step=step):
            tf.summary.image("reconstructions", grid[None], max_outputs=1)
        eval_writer.flush()
        write_image_grid(os.path.join(self.model_dir, "samples", f"step_{step}.png"), images,
                         num_columns=len(targets), min_tile_size=VIEWABLE_TILE)
