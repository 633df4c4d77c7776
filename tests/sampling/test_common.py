import numpy as np
import tensorflow as tf

from t2t_image.sampling import common


def test_draws_keep_working_across_many_output_shapes():
    # Regression: a shape-relaxing tf.function lost the static mixture count after a
    # few traces with different num_mixtures and the DMOL draw failed.
    seed = tf.constant([1, 2], tf.int64)
    for k in (1, 2, 3, 4, 5, 6):
        out = common.draw_values("dmol", tf.zeros((2, 10 * k)), seed, 1.0)
        assert tuple(out.shape) == (2, 3)
    for n in (3, 5, 7, 9, 11, 256):
        out = common.draw_values("cat", tf.zeros((2, n)), seed, 0.0)
        np.testing.assert_array_equal(np.asarray(out), [0, 0])
