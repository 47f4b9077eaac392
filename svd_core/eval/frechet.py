"""Frechet distance between Gaussian feature statistics (FID / FVD), with a stable PSD matrix square root."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..atomic import atomic_path


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix by eigendecomposition.

    Eigenvalues that round-off pushed below zero are clamped to 0, so near-singular (rank-deficient)
    covariances give a real, symmetric root instead of the complex noise of a general `sqrtm`.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"sqrtm_psd: expected a square matrix, got shape {a.shape}")
    a = 0.5 * (a + a.T)  # symmetrise: covariances accumulated in float are symmetric only up to round-off
    w, v = np.linalg.eigh(a)
    w = np.clip(w, 0.0, None)
    return (v * np.sqrt(w)) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(S1 S2)) for PSD S1, S2, computed as tr(sqrt(sqrt(S1) S2 sqrt(S1))) (similar matrices).

    sqrt(S1) S2 sqrt(S1) is symmetric PSD, so both roots are eigendecompositions: no complex parts, no
    blow-up when S1 or S2 is singular (fewer samples than feature dimensions).
    """
    s1 = sqrtm_psd(sigma1)
    m = s1 @ np.asarray(sigma2, dtype=np.float64) @ s1
    m = 0.5 * (m + m.T)
    w = np.linalg.eigvalsh(m)
    # eigenvalues within round-off of 0 (null space of a rank-deficient covariance) are 0: their sqrt would
    # otherwise add ~sqrt(eps * |M|) each and bias the trace
    tol = max(float(w.max(initial=0.0)), 0.0) * m.shape[0] * np.finfo(np.float64).eps
    return float(np.sqrt(np.where(w > tol, w, 0.0)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) (Frechet / 2-Wasserstein distance of Gaussians)."""
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: feature means differ in shape {mu1.shape} vs {mu2.shape}; "
                         "both sets must use the same feature extractor")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"frechet_distance: {name} has shape {s.shape}, expected ({d}, {d})")
    diff = mu1 - mu2
    tr = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    # tr(...) >= 0 mathematically; clamp the tiny negative round-off of identical sets to exactly 0
    return float(max(diff @ diff + tr, 0.0))


@dataclass
class FeatureStats:
    """Running mean / covariance of feature vectors (float64 sums, so sets can be fed in batches)."""

    dim: int | None = None
    n: int = 0
    sum: np.ndarray | None = None
    sum_outer: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def append(self, feats) -> None:
        """Accumulate a (n, d) batch of features."""
        x = np.asarray(feats.detach().cpu().numpy() if hasattr(feats, "detach") else feats, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"FeatureStats.append: expected (n, d) features, got shape {x.shape}")
        if self.dim is None:
            self.dim = x.shape[1]
            self.sum = np.zeros(self.dim)
            self.sum_outer = np.zeros((self.dim, self.dim))
        if x.shape[1] != self.dim:
            raise ValueError(f"FeatureStats.append: feature width {x.shape[1]} != {self.dim} of earlier batches")
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.sum_outer += x.T @ x

    @property
    def mu(self) -> np.ndarray:
        self._check()
        return self.sum / self.n

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (np.cov convention, ddof = 1)."""
        self._check()
        if self.n < 2:
            raise ValueError("FeatureStats: the covariance needs at least 2 videos, got 1")
        mu = self.mu
        return (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)

    def _check(self) -> None:
        if self.n == 0:
            raise ValueError("FeatureStats: no features were accumulated (empty video set?)")

    def save(self, path: str) -> None:
        """Write mu, sigma, n and metadata to a safetensors file (temp file, then rename)."""
        from safetensors.numpy import save_file

        tensors = {"mu": self.mu, "sigma": self.sigma, "n": np.array([self.n], dtype=np.int64)}
        meta = {"format": "svd_core.eval.FeatureStats/1", "meta": json.dumps(self.meta, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str) -> "FeatureStats":
        """Read statistics written by `save`."""
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "svd_core.eval.FeatureStats/1":
                raise ValueError(f"{path}: not a feature-statistics file written by `svd_core eval` "
                                 f"(format {meta.get('format')!r})")
            mu, sigma, n = f.get_tensor("mu"), f.get_tensor("sigma"), int(f.get_tensor("n")[0])
        stats = cls(dim=mu.shape[0], n=n, meta=json.loads(meta.get("meta", "{}")))
        # rebuild the sums so loaded statistics behave exactly like accumulated ones
        stats.sum = mu * n
        stats.sum_outer = sigma * (n - 1) + n * np.outer(mu, mu)
        return stats


def stats_cache_key(files: list[str], extractor_id: str, preprocess: dict) -> str:
    """Hash of (file paths, sizes, mtimes, extractor, preprocessing): a stale cache never matches."""
    h = hashlib.sha256()
    h.update(extractor_id.encode())
    h.update(json.dumps(preprocess, sort_keys=True).encode())
    for f in sorted(files):
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def fid_from_features(feats_a, feats_b) -> float:
    """Frechet distance between two (n, d) feature arrays."""
    a, b = FeatureStats(), FeatureStats()
    a.append(feats_a)
    b.append(feats_b)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
