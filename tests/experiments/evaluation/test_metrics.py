"""Per-face errors and the bootstrap every interval is built from."""
import numpy as np
import pandas as pd

from experiments.evaluation.metrics import bootstrap_ci, interval, per_face


def test_bootstrap_interval_on_known_data():
    assert bootstrap_ci(np.ones((2, 50))) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    coin = (rng.random((1, 10_000)) < 0.5).astype(float)
    low, high = bootstrap_ci(coin, n_boot=1000)
    half_width = 1.96 * np.sqrt(0.25 / 10_000)  # the normal approximation for a proportion
    assert low < coin.mean() < high
    assert abs((high - low) / 2 - half_width) < 0.002
    wide = bootstrap_ci(coin[:, :100], n_boot=1000)
    assert wide[1] - wide[0] > 5 * (high - low)


def test_one_resampling_serves_every_interval():
    values = np.random.default_rng(3).random(400)
    # an S×N array resamples faces, so its interval is that of the faces' mean over seeds
    assert bootstrap_ci(np.stack([values, values])) == bootstrap_ci(values[None])
    assert interval(values, np.random.default_rng(0), 2000) == bootstrap_ci(values[None])


def test_per_face_errors():
    frame = pd.DataFrame({"p_female": [0.9, 0.2, 0.5], "gender": [1, 1, 0], "pred_age": [30.0, 20.0, 41.0],
                          "age": [25, 20, 40]})
    correct, abs_err = per_face(frame)
    assert correct.tolist() == [1.0, 0.0, 0.0] and abs_err.tolist() == [5.0, 0.0, 1.0]
