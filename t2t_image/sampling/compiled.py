"""The one backend-specific piece of the samplers: compiling a function of a model.

Everything the samplers compute (the decoding loop, ``keras.ops.while_loop``
over ``call_step``, the draws, the prefix handling) is written once with
``keras.ops``. Only turning such a function into a compiled one differs:

* TensorFlow: a ``tf.function`` (``jit_compile`` selects XLA), which reads the
  model's variables as captured resources.
* JAX: ``jax.jit`` of the function run inside a ``keras.StatelessScope`` that
  maps every model variable to a traced argument, so the weights are inputs of
  the compiled program (not constants baked into it) and a model whose weights
  change later (training, checkpoint restore) is sampled with its current
  weights without recompiling. JAX always compiles with XLA (``jit_compile``
  is ignored).

Compiled functions are created once per (model, name, jit_compile) and kept
while the model lives. Not a T2T function (T2T is TensorFlow-only).
"""

import weakref

import keras

# Compiled functions per model (weakly keyed so that models can be freed).
_COMPILED = weakref.WeakKeyDictionary()


def backend():
    """The Keras backend the samplers run on: "tensorflow" or "jax".

    Raises:
        NotImplementedError: for other backends.
    """
    name = keras.backend.backend()
    if name not in ("tensorflow", "jax"):
        raise NotImplementedError(
            f"the samplers support the tensorflow and jax Keras backends, got "
            f"KERAS_BACKEND={name!r}."
        )
    return name


def _jax_function(model, fn):
    import jax

    def stateless(values, *args):
        mapping = list(zip(model.variables, values))
        with keras.StatelessScope(state_mapping=mapping):
            return fn(*args)

    jitted = jax.jit(stateless)

    def run(*args):
        return jitted([v.value for v in model.variables], *args)

    # The traced program, for tests and benchmarks: jaxpr(*args).
    run.jaxpr = lambda *args: jax.make_jaxpr(stateless)([v.value for v in model.variables],
                                                        *args)
    return run


def compiled(model, name, jit_compile, make):
    """The compiled ``make()`` for ``model``, created once per (name, jit_compile).

    Args:
        model: the Keras model ``make()``'s function closes over.
        name: str; must encode every static (Python) setting the function
            closes over (e.g. ``top_k``).
        jit_compile: bool; TensorFlow: XLA or not; JAX: ignored (always XLA).
        make: callable returning the function (tensor arguments only).

    Returns:
        A callable taking the function's arguments (tensors, NumPy arrays or
        nested dicts/lists of them).
    """
    functions = _COMPILED.setdefault(model, {})
    key = (name, bool(jit_compile))
    if key not in functions:
        if backend() == "jax":
            functions[key] = _jax_function(model, make())
        else:
            import tensorflow as tf

            functions[key] = tf.function(make(), jit_compile=bool(jit_compile),
                                         reduce_retracing=True)
    return functions[key]


def finished(x):
    """``x`` once its computation has finished (JAX dispatches asynchronously).

    Progress reports call this first, so that a reported step count (and the
    time a caller measures for it) is work done, not work queued.

    Args:
        x: a tensor or array returned by a compiled function.

    Returns:
        ``x``.
    """
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    return x
