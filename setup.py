"""t2t_image: the Image Transformer (Parmar et al., ICML 2018) in TensorFlow 2 / Keras 3."""

import setuptools

setuptools.setup(
    name="t2t_image",
    version="0.1.0",
    description=(
        "Image Transformer (Parmar et al., 2018) for TensorFlow 2 / Keras 3, "
        "numerically faithful to Tensor2Tensor."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["t2t_image", "t2t_image.*"]),
    python_requires=">=3.11",
    install_requires=[
        "keras>=3.15,<4",
        "tensorflow-datasets==4.9.10",
        # tensorflow-datasets 4.9.10 imports it on Python 3.11 without declaring it.
        "importlib_resources",
        # TF 2.21 no longer depends on it; without it every tf.summary call raises.
        "tensorboard==2.21.*",
        "gin-config==0.5.0",
        "absl-py",
        "numpy",
        "pillow",
    ],
    # tensorflow-cpu and tensorflow are different distributions, so TF comes
    # through an extra, as in Tensor2Tensor.
    extras_require={
        "cpu": ["tensorflow-cpu==2.21.*"],
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        # imagecodecs: JPEG 2000 and JPEG XL in benchmarks/compression.py and its test.
        "test": ["pytest", "pytest-xdist", "imagecodecs"],
        # KERAS_BACKEND=jax: training, evaluation and sampling under JAX (CPU wheel; on a
        # GPU install jax[cuda12] instead). Works without TensorFlow for npz/random data.
        "jax": ["jax[cpu]>=0.10"],
        # experiments/reproduce.py: plots of the reduced-scale reproduction study.
        "study": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "t2t-image-trainer = t2t_image.cli.trainer:run",
            "t2t-image-sampler = t2t_image.cli.sampler:run",
            "t2t-image-exporter = t2t_image.cli.exporter:run",
            "t2t-image-compress = t2t_image.cli.compress:run",
            "t2t-image-decompress = t2t_image.cli.decompress:run",
            "t2t-image-launch = t2t_image.cli.launch:run",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
