"""Data curation (paper Sec. 3, App. C): cuts, clipping, per-clip scores, filters, manifest, scale-out."""
