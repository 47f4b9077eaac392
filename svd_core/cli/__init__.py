"""Command-line front ends of svd_core (dispatched by `python -m svd_core`)."""
