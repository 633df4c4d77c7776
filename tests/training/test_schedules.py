import numpy as np
import pytest

from t2t_image.training.schedules import NoamSchedule


def test_noam_matches_t2t_formula_and_peaks_at_warmup():
    schedule = NoamSchedule(0.2, hidden_size=512, warmup_steps=100)
    steps = np.array([0, 1, 50, 99, 100, 400, 10_000])
    got = np.array([float(schedule(s)) for s in steps])
    s = steps + 1.0
    expected = 0.2 * 10 * 512**-0.5 * np.minimum(s * 100**-1.5, s**-0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.argmax() == 3  # step 99 is (step + 1) == warmup
    assert NoamSchedule.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="warmup_steps"):
        NoamSchedule(0.1, 512, 0)
