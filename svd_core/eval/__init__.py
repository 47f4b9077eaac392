"""Evaluation: FVD (I3D features), Elo from pairwise human votes with a voting page, multi-view metrics.

Never imports ComfyUI; heavy optional packages (lpips, open_clip, aiohttp) load only where they are used.
"""
from .elo import Vote, bootstrap_elo, elo_by_axis, read_votes_csv
from .frechet import FeatureStats, frechet_distance, sqrtm_psd, trace_sqrt_product
from .fvd import fvd_folders, fvd_tensors

__all__ = ["Vote", "bootstrap_elo", "elo_by_axis", "read_votes_csv", "FeatureStats", "frechet_distance",
           "sqrtm_psd", "trace_sqrt_product", "fvd_folders", "fvd_tensors"]
