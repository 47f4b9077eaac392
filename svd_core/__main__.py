"""Command line: `python -m svd_core COMMAND ...` (img2vid, orbit, curate, eval, train, stage1, info)."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module exposing `add_arguments(parser)` and `run(args) -> int`, one-line help).
# Modules are imported only for the command that runs, so `curate` never pays for the UNet and vice versa.
COMMANDS: dict[str, tuple[str, str]] = {
    "img2vid": ("svd_core.cli.img2vid", "image to video with SVD / SVD-XT"),
    "orbit": ("svd_core.cli.orbit", "multi-view orbit video with SV3D"),
    "info": ("svd_core.cli.info", "inspect a checkpoint: variant, keys, dtype"),
    "curate": ("svd_core.curation.cli", "data curation: cuts, clipping, scores, filters, stats"),
    "eval": ("svd_core.eval.cli", "evaluation: FVD, Elo, multi-view metrics"),
    "train": ("svd_core.training.cli", "training from a config file"),
    "stage1": ("svd_core.cli.stage1", "Stage I: a video model built from an SD 2.x image model"),
}


def _usage() -> str:
    lines = ["usage: python -m svd_core COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`python -m svd_core COMMAND --help` describes one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name = argv.pop(0)
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = _Parser(prog=f"python -m svd_core {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    from .cli import CLIError

    try:
        return int(module.run(args) or 0)
    except CLIError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; unfinished output files were removed", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (which option, what was expected) and exit status 2, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


if __name__ == "__main__":
    sys.exit(main())
