"""Adversarial loss terms of the VQGAN first stage (Esser et al. 2021, "Taming Transformers").

VQGAN trains its autoencoder against a PatchGAN discriminator (Isola et al.
2017) with a hinge (or "vanilla" non-saturating) discriminator loss, a
generator term ``-mean(D(x_hat))``, an adaptive weight that balances the
adversarial gradient against the reconstruction gradient at the decoder's last
layer (Esser et al. 2021, Sec. 3.1, Eq. 7) and a warm-up that switches the
adversarial terms on at a given step (``adopt_weight`` in the reference code).

All functions are pure ``keras.ops``, compile with XLA and contain no Python
branching on tensor values. Every result is a float32 scalar: logits are cast
to float32 first whatever the dtype policy (losses are numerics-sensitive).
"""

import numbers

from keras import ops


def _check_positive(name, value):
    # Only Python numbers can be checked eagerly; tensors are taken as given.
    if isinstance(value, numbers.Number) and not value > 0:
        raise ValueError(f"{name} must be positive, got {name}={value!r}.")


def hinge_discriminator_loss(real_logits, fake_logits):
    """Hinge loss of a discriminator: ``0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])``.

    Means run over every element (all images and all patch logits), as in
    VQGAN's ``hinge_d_loss``; the factor 0.5 averages the real and fake halves.
    Esser et al. 2021, Sec. 3.1 (the discriminator objective of Eq. 5, trained
    with the hinge loss of their implementation).

    Args:
        real_logits: float tensor of discriminator logits on real images,
            any shape (e.g. `[batch, h, w, 1]` patch logits).
        fake_logits: float tensor of discriminator logits on reconstructions,
            any shape.

    Returns:
        A float32 scalar.
    """
    # Losses are numerics-sensitive: computed in float32 whatever the dtype policy.
    real = ops.cast(real_logits, "float32")
    fake = ops.cast(fake_logits, "float32")
    return 0.5 * (ops.mean(ops.relu(1.0 - real)) + ops.mean(ops.relu(1.0 + fake)))


def vanilla_discriminator_loss(real_logits, fake_logits):
    """Non-saturating ("vanilla") GAN loss of a discriminator.

    ``0.5 * (E[softplus(-D(x))] + E[softplus(D(x_hat))])``:
    the binary cross-entropy of sigmoid(logit) with "real" = 1 and "fake" = 0,
    written with softplus so that it is stable for large logits; VQGAN's
    ``vanilla_d_loss``. Esser et al. 2021, Sec. 3.1 (Eq. 5, the GAN term);
    Goodfellow et al. 2014.

    Args:
        real_logits: float tensor of discriminator logits on real images.
        fake_logits: float tensor of discriminator logits on reconstructions.

    Returns:
        A float32 scalar.
    """
    # Losses are numerics-sensitive: computed in float32 whatever the dtype policy.
    real = ops.cast(real_logits, "float32")
    fake = ops.cast(fake_logits, "float32")
    return 0.5 * (ops.mean(ops.softplus(-real)) + ops.mean(ops.softplus(fake)))


def generator_loss(fake_logits):
    """The autoencoder's adversarial term: ``-mean(D(x_hat))``.

    VQGAN's generator loss (``g_loss = -torch.mean(logits_fake)``), used with
    either discriminator loss above. Esser et al. 2021, Sec. 3.1 (the
    generator side of Eq. 5, weighted by the adaptive weight of Eq. 7).

    Args:
        fake_logits: float tensor of discriminator logits on reconstructions.

    Returns:
        A float32 scalar.
    """
    # Losses are numerics-sensitive: computed in float32 whatever the dtype policy.
    return -ops.mean(ops.cast(fake_logits, "float32"))


def adaptive_weight(rec_grad_norm, gan_grad_norm, delta=1e-4, max_weight=1e4):
    """VQGAN's adaptive GAN weight ``clip(rec / (gan + delta), 0, max_weight)``.

    ``rec_grad_norm`` and ``gan_grad_norm`` are the L2 norms of the gradients of
    the reconstruction (+ perceptual) loss and of the generator loss with
    respect to the decoder's last layer weights; the trainer computes them with
    a gradient tape, this op only combines them. The result is wrapped in
    ``stop_gradient`` (the reference code ``detach``es it): it scales the
    generator loss but is not itself optimised. Esser et al. 2021, Sec. 3.1,
    Eq. 7 (``lambda = grad_GL[L_rec] / (grad_GL[L_GAN] + delta)``).

    Args:
        rec_grad_norm: float scalar tensor (or number), norm of the
            reconstruction-loss gradient.
        gan_grad_norm: float scalar tensor (or number), norm of the
            generator-loss gradient.
        delta: positive float added to the denominator (paper: 1e-6; the
            reference implementation uses 1e-4).
        max_weight: positive float, upper clip of the weight (reference: 1e4).

    Returns:
        A float32 scalar (same shape as the broadcast inputs) in
        ``[0, max_weight]``, without gradient.

    Raises:
        ValueError: if ``delta`` or ``max_weight`` is not positive.
    """
    _check_positive("delta", delta)
    _check_positive("max_weight", max_weight)
    # Ratios of gradient norms are numerics-sensitive: computed in float32.
    rec = ops.cast(rec_grad_norm, "float32")
    gan = ops.cast(gan_grad_norm, "float32")
    ratio = rec / (gan + ops.cast(delta, "float32"))
    weight = ops.clip(ratio, 0.0, ops.cast(max_weight, "float32"))
    return ops.stop_gradient(weight)


def discriminator_factor(step, start_step, factor=1.0):
    """The GAN warm-up switch: ``factor`` once ``step >= start_step``, else 0.

    VQGAN trains the autoencoder without the adversarial terms until
    ``disc_start`` steps have passed (``adopt_weight`` in the reference code);
    this factor multiplies both the generator term and the discriminator loss.
    Written with ``ops.where`` so that ``step`` may be a traced tensor (no
    Python branching). Esser et al. 2021, Sec. 4 / Appendix (training details).

    Args:
        step: int scalar tensor or Python int, the current training step.
        start_step: int scalar tensor or Python int, first step with the GAN on.
        factor: float scalar (tensor or number), the value once switched on.

    Returns:
        A float32 scalar: ``factor`` or 0.
    """
    # Compared in step's own integer dtype (int64 needs x64 under JAX, so no forced cast).
    step = ops.convert_to_tensor(step)
    on = ops.greater_equal(step, ops.cast(start_step, step.dtype))
    # Loss weights are kept in float32 like the losses they scale.
    factor = ops.cast(factor, "float32")
    return ops.where(on, factor, ops.zeros_like(factor))
