"""Command-line front ends of svd_core (dispatched by `python -m svd_core`)."""


class CLIError(Exception):
    """A bad option or input: `python -m svd_core` prints it as one line and exits with status 2."""
