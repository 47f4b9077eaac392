"""`python -m svd_core curate {cuts,run,stats}`: curation without ComfyUI (paper Sec. 3)."""
from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    """Sub-commands: cuts VIDEO, run CONFIG, stats MANIFEST."""
    sub = parser.add_subparsers(dest="curate_command", required=True)
    cuts = sub.add_parser("cuts", help="print the merged cascade cut times (s) of one video")
    cuts.add_argument("video")
    cuts.add_argument("--json", action="store_true", help='print {"fps": .., "cuts": [..]}')
    cuts.add_argument("--single", action="store_true", help="one content detector at the native rate only")
    run = sub.add_parser("run", help="run a whole curation pipeline from a TOML/JSON config")
    run.add_argument("config")
    run.add_argument("--runner", choices=("local", "ray"), help="override the config's runner")
    stats = sub.add_parser("stats", help="print the Table 1 statistics of a manifest")
    stats.add_argument("manifest")
    stats.add_argument("--json", action="store_true")


def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, file=sys.stderr, leave=False)

    def progress(done: int, total: int, stage: str | None = None) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        bar.refresh()

    return bar, progress


def run(args) -> int:
    from ..video_io import MediaError
    from . import CurationError

    try:
        return _run(args)
    except (CurationError, MediaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.curate_command == "cuts":
        from .cuts import DEFAULT_CASCADE, SINGLE_CONTENT, detect_cuts

        result = detect_cuts(args.video, SINGLE_CONTENT if args.single else DEFAULT_CASCADE)
        if args.json:
            print(json.dumps({"fps": result.fps, "cuts": result.cuts}))
        else:
            print("\n".join(f"{t:.3f}" for t in result.cuts))
        return 0
    if args.curate_command == "run":
        from .config import load_config
        from .manifest import format_stats
        from .pipeline import run as run_pipeline

        cfg = load_config(args.config)
        if args.runner:
            cfg.runner = args.runner
        bar, progress = _bar(f"curate ({cfg.runner})")
        try:
            result = run_pipeline(cfg, progress=progress)
        finally:
            bar.close()
        print(f"manifest: {result.manifest}\nfiltered: {result.filtered_manifest}")
        print(result.report.to_text())
        print(format_stats(result.filtered_stats))
        return 0
    from .manifest import format_stats, read_manifest, table1_stats

    stats = table1_stats(read_manifest(args.manifest))
    print(json.dumps(stats) if args.json else format_stats(stats))
    return 0
