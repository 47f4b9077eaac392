"""Frechet distance and the PSD matrix square root: closed forms, scipy parity, near-singular covariances."""
import numpy as np
import pytest
import scipy.linalg

from svd_core.eval.frechet import (FeatureStats, fid_from_features, frechet_distance, sqrtm_psd,
                                   stats_cache_key, trace_sqrt_product)


def _spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T


def test_sqrtm_psd_matches_scipy_on_well_conditioned_matrices():
    rng = np.random.default_rng(0)
    for d in (1, 5, 64):
        s = _spd(rng, d) + np.eye(d)
        ours, ref = sqrtm_psd(s), np.real(scipy.linalg.sqrtm(s))
        assert np.abs(ours - ref).max() < 1e-9 * np.abs(ref).max()
        assert np.allclose(ours @ ours, s, rtol=0, atol=1e-9 * np.abs(s).max())


def test_trace_sqrt_product_matches_scipy():
    rng = np.random.default_rng(1)
    s1, s2 = _spd(rng, 50), _spd(rng, 50)
    ref = np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert abs(trace_sqrt_product(s1, s2) - ref) < 1e-9 * ref


def test_closed_form_diagonal_gaussians():
    # For commuting (diagonal) covariances d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    a, b = np.array([4.0, 1.0, 9.0]), np.array([1.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(10.0 + 1.0 + 6.25)


def test_closed_form_one_dimensional_and_rotated():
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9.0 + 1.0)
    # a rotation of both covariances does not change the distance
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(np.zeros(6), q @ np.diag(a) @ q.T, np.zeros(6), q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_set_with_itself_is_zero_even_when_covariance_is_singular():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(10, 64)) * 5 + 2  # 10 samples in 64-d: rank-9 covariance
    st = FeatureStats()
    st.append(feats)
    assert np.linalg.matrix_rank(st.sigma) == 9
    ours = frechet_distance(st.mu, st.sigma, st.mu, st.sigma)
    assert ours < 1e-12 * np.trace(st.sigma)
    # not merely clamped at 0: the trace term itself cancels to round-off
    raw = 2 * np.trace(st.sigma) - 2 * trace_sqrt_product(st.sigma, st.sigma)
    assert abs(raw) < 1e-12 * np.trace(st.sigma)
    # the naive general-purpose root leaves a visible error on the same singular case
    naive = 2 * np.trace(st.sigma) - 2 * np.trace(np.real(scipy.linalg.sqrtm(st.sigma @ st.sigma)))
    assert abs(naive) > ours


def test_near_singular_matches_scipy_with_regularisation():
    rng = np.random.default_rng(4)
    s1, s2 = _spd(rng, 40, rank=12), _spd(rng, 40, rank=12)
    eps = 1e-6 * np.eye(40)
    ref = np.trace(s1 + s2) - 2 * np.trace(np.real(scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))))
    ours = frechet_distance(np.zeros(40), s1, np.zeros(40), s2)
    assert ours == pytest.approx(ref, rel=1e-4)


def test_sampled_gaussians_approach_closed_form():
    rng = np.random.default_rng(5)
    d = 4
    x = rng.normal(size=(200_000, d)) * 2.0  # N(0, 4 I)
    y = rng.normal(size=(200_000, d)) + 1.0  # N(1, I)
    assert fid_from_features(x, y) == pytest.approx(d * 1.0 + d * (2 - 1) ** 2, rel=0.02)


def test_feature_stats_batches_and_cache_roundtrip(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(37, 8))
    st = FeatureStats(meta={"extractor": "x"})
    for i in range(0, 37, 10):
        st.append(x[i: i + 10])
    assert np.allclose(st.mu, x.mean(0)) and np.allclose(st.sigma, np.cov(x, rowvar=False))
    st.save(str(tmp_path / "s.safetensors"))
    back = FeatureStats.load(str(tmp_path / "s.safetensors"))
    assert back.n == 37 and back.meta == {"extractor": "x"}
    assert np.allclose(back.mu, st.mu) and np.allclose(back.sigma, st.sigma)
    assert not list(tmp_path.glob("*.tmp"))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    st = FeatureStats()
    st.append(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        st.sigma
    with pytest.raises(ValueError, match="feature width 4"):
        st.append(np.ones((2, 4)))
    (tmp_path / "a.bin").write_bytes(b"x")
    k1 = stats_cache_key([str(tmp_path / "a.bin")], "ext", {"n": 1})
    assert k1 != stats_cache_key([str(tmp_path / "a.bin")], "ext", {"n": 2})
    assert k1 != stats_cache_key([str(tmp_path / "a.bin")], "other", {"n": 1})
