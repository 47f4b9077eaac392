"""Data curation (paper Sec. 3, App. C): cuts, clipping, per-clip scores, filters, manifest, scale-out.

Media files are read through `svd_core.video_io` (probing, keyframes, frame sampling); a file that cannot be read
raises its `MediaError`, bad curation input `CurationError`."""


class CurationError(ValueError):
    """Bad input to a curation stage; the message names the value, what was expected and what fixes it."""
