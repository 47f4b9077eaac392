"""`python -m svd_core eval {fvd,ucf101,elo,mv,serve,prompts}`: FVD, the zero-shot UCF-101 FVD run, Elo from votes,
multi-view metrics, voting page."""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

# = ucf101.DEFAULT_NUM_SAMPLES and cli.common.SAMPLER_CHOICES (not imported: those load torch; tests check equality)
DEFAULT_UCF_SAMPLES = 10_000
SAMPLER_CHOICES = ("euler", "heun", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="{fvd,ucf101,elo,mv,serve,prompts}")

    p = sub.add_parser("fvd", help="FVD between two folders of videos (or cached statistics files)")
    p.add_argument("dir_a", help="folder of videos / frame folders, or a .safetensors statistics file")
    p.add_argument("dir_b", help="second set, same forms as DIR_A")
    p.add_argument("--i3d", default=None, help="I3D TorchScript file (i3d_torchscript.pt of StyleGAN-V)")
    p.add_argument("--extractor", default="i3d",
                   help="feature extractor: a registered name (i3d) or MODULE:FACTORY returning a "
                        "svd_core.eval.features.FeatureExtractor (called with device=...)")
    p.add_argument("--protocol", default="none", choices=["none", "ucf101"],
                   help="preset: ucf101 = 16 frames @ 25 fps, antialiased resize to short side 240, crop 240x320")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (overrides the protocol)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cache-dir", default=None, help="folder where feature statistics are cached and reused")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("ucf101", help="zero-shot UCF-101 FVD of a text-to-video checkpoint (paper Sec. 4.3): "
                                      "generate class-name-prompted samples (resumable), score against the real set")
    p.add_argument("--checkpoint", required=True, help="text-to-video checkpoint (variant t2v), .safetensors")
    p.add_argument("--real", required=True, help="real UCF-101 videos: the dataset folder (Class/v_Class_gNN_cNN.avi) "
                                                 "or a flat folder of videos")
    p.add_argument("--out", required=True, help="run folder: videos/, manifest.json, fvd.json, fvd_stats/ (rerun "
                                                "with the same options to resume)")
    p.add_argument("--i3d", default=None, help="I3D TorchScript file (i3d_torchscript.pt of StyleGAN-V)")
    p.add_argument("--extractor", default="i3d", help="feature extractor: i3d (needs --i3d), a registered name, or "
                                                      "MODULE:FACTORY")
    p.add_argument("--num-samples", default=str(DEFAULT_UCF_SAMPLES),
                   help=f"videos in total, spread over the classes in the real set's proportions (default "
                        f"{DEFAULT_UCF_SAMPLES}); 'real' for as many as the real set holds")
    p.add_argument("--samples-per-class", type=int, default=None, help="videos per class instead of --num-samples")
    p.add_argument("--classes", default=None, help="comma-separated UCF-101 classes to sample (default: the real "
                                                   "set's classes)")
    p.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale, every frame (paper: 7)")
    p.add_argument("--frames", type=int, default=16, help="frames per video (paper: 16)")
    p.add_argument("--fps", type=float, default=25.0, help="fps conditioning and file rate (paper: 25)")
    p.add_argument("--height", type=int, default=320, help="sample height (protocol: 320)")
    p.add_argument("--width", type=int, default=576, help="sample width (protocol: 576)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the variant's)")
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default="euler")
    p.add_argument("--schedule", choices=("karras", "exponential"), default="karras")
    p.add_argument("--motion-score", type=float, default=None, help="motion conditioning (default: the variant's)")
    p.add_argument("--seed", type=int, default=0, help="video i uses seed + i")
    p.add_argument("--batch-size", type=int, default=8, help="clips per feature-extractor pass")
    p.add_argument("--cache-dir", default=None, help="real-set statistics cache (default OUT/fvd_stats)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="weights dtype (auto: float16 on GPU, float32 on CPU)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("elo", help="bootstrapped Elo ratings from a votes table (paper App. E.1.2)")
    p.add_argument("votes", help="CSV with columns model_a, model_b, winner (a / b / tie / model name), axis")
    p.add_argument("--orderings", type=int, default=1000, help="random vote orderings bootstrapped (paper: 1000)")
    p.add_argument("--k", type=float, default=1.0, help="Elo K factor (paper: 1)")
    p.add_argument("--initial", type=float, default=1000.0, help="initial rating (paper: 1000)")
    p.add_argument("--ci", type=float, default=0.95, help="width of the percentile interval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aggregate", action="store_true",
                   help="also rate all axes' votes pooled into one table, 'aggregated' (paper App. E.1.2)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("mv", help="PSNR / SSIM / LPIPS / CLIP-S between generated and ground-truth views")
    p.add_argument("gen_dir", help="generated views: a folder of images, a video file, or a folder of such per object")
    p.add_argument("gt_dir", help="ground-truth views, same layout as GEN_DIR")
    p.add_argument("--lpips", default=None, help="LPIPS weights (.safetensors/.pth: LPIPS or torchvision backbone)")
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"])
    p.add_argument("--clip-model", default="ViT-H-14", help="open_clip model name for CLIP-S")
    p.add_argument("--clip-weights", default=None, help="open_clip checkpoint file for CLIP-S")
    p.add_argument("--clip-config", default=None, help="extra open_clip model config (.json) to register")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="voting page for pairwise human preference (standalone server)")
    p.add_argument("manifest", nargs="?", help="study manifest (.json); or give --model NAME=DIR twice or more")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="one folder of videos per model")
    p.add_argument("--name", default="study", help="study name (with --model)")
    p.add_argument("--images", default=None, help="conditioning images STEM.png (with --model)")
    p.add_argument("--checks", type=int, default=4, help="attention checks generated (with --model)")
    p.add_argument("--db", required=True, help="SQLite file for the votes (created if missing)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8189)
    p.add_argument("--token", default=os.environ.get("SVD_VOTE_TOKEN"),
                   help="organiser token for the leaderboard, CSV export and new codes (default: $SVD_VOTE_TOKEN, "
                        "the manifest's organiser_token, or a random one printed at start)")
    p.add_argument("--codes", type=int, default=10,
                   help="participant codes the study holds (printed at start; more via POST api/codes)")

    p = sub.add_parser("prompts", help="class-balanced UCF-101 prompt list (one 'class<TAB>prompt' per line)")
    p.add_argument("--num", type=int, default=2048)


def _views(path: str) -> dict[str, np.ndarray]:
    """{object: (v, h, w, 3) uint8} from a video file, a folder of view images, or a folder of those."""
    from ..video_io import VIDEO_EXTENSIONS, list_images, read_frames

    if os.path.isfile(path):
        return {"": read_frames(path)}
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is neither a video file nor a folder of views")
    if list_images(path):
        return {"": read_frames(path)}  # the folder's images, sorted by name
    out = {}
    for name in sorted(os.listdir(path)):
        sub = os.path.join(path, name)
        if os.path.isdir(sub) or name.lower().endswith(VIDEO_EXTENSIONS):
            out[os.path.splitext(name)[0]] = _views(sub)[""]
    if not out:
        raise ValueError(f"{path!r} holds no views (images, video files, or per-object folders)")
    return out


def run_mv(args) -> dict:
    from .multiview import ViewMetrics, load_clip, load_lpips, view_metrics

    gen, gt = _views(args.gen_dir), _views(args.gt_dir)
    if set(gen) != set(gt):
        raise ValueError(f"objects differ between {args.gen_dir} and {args.gt_dir}: "
                         f"only generated {sorted(set(gen) - set(gt))}, only ground truth {sorted(set(gt) - set(gen))}")
    lp = load_lpips(args.lpips, args.lpips_net, args.device) if args.lpips else None
    clip = None
    if args.clip_weights:
        if args.clip_config:
            import open_clip

            open_clip.add_model_config(args.clip_config)
        clip = load_clip(args.clip_model, args.clip_weights, args.device)
    per_object = {k: view_metrics(gen[k], gt[k], lp, clip) for k in sorted(gen)}
    # per view: averaged over objects (paper Fig. 9 reports the mean over views and objects)
    keys = list(next(iter(per_object.values())).per_view)
    nviews = {len(m.per_view[keys[0]]) for m in per_object.values()}
    if len(nviews) != 1:
        raise ValueError(f"objects have different view counts {sorted(nviews)}")
    avg = ViewMetrics({k: np.mean([m.per_view[k] for m in per_object.values()], axis=0).tolist() for k in keys})
    return {"objects": {k: m.as_dict() for k, m in per_object.items()}, "average": avg}


def _extractor(args):
    """--extractor i3d (needs --i3d), another registered name, or MODULE:FACTORY."""
    import importlib

    from .features import get_extractor

    if args.extractor == "i3d":
        if not args.i3d:
            raise ValueError("fvd: --i3d PATH is required with the I3D extractor (the i3d_torchscript.pt file)")
        return get_extractor("i3d", path=args.i3d, device=args.device)
    if ":" in args.extractor:
        module, _, factory = args.extractor.partition(":")
        try:
            fn = getattr(importlib.import_module(module), factory)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"--extractor {args.extractor!r}: cannot import {factory} from {module} ({exc})") from exc
        return fn(device=args.device)
    return get_extractor(args.extractor, device=args.device)


def run_ucf101(args) -> int:
    """Load the t2v checkpoint, generate / resume the samples, print the FVD with the protocol name."""
    from ..cli.common import load_model
    from .ucf101 import UCF101Settings, evaluate_ucf101, model_id

    if args.num_samples == "real":
        num = None
    else:
        try:
            num = int(args.num_samples)
        except ValueError:
            raise ValueError(f"--num-samples {args.num_samples!r}: expected a number of videos or 'real'") from None
    settings = UCF101Settings(cfg_scale=args.cfg, num_frames=args.frames, fps=args.fps, height=args.height,
                              width=args.width, steps=args.steps, sampler=args.sampler, schedule=args.schedule,
                              motion_score=args.motion_score, seed=args.seed, model=model_id(args.checkpoint))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    import torch

    args.offload = False
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ext_args = argparse.Namespace(extractor=args.extractor, i3d=args.i3d, device=args.device)
    extractor = _extractor(ext_args)  # before generating: a missing I3D file fails fast
    model, device = load_model(args)

    def progress(done, total, stage=None):
        print(f"\rvideos {done}/{total}", end="\n" if done >= total else "", file=sys.stderr, flush=True)

    res = evaluate_ucf101(model, args.real, args.out, extractor, settings=settings, num_samples=num,
                          samples_per_class=args.samples_per_class, classes=classes, cache_dir=args.cache_dir,
                          batch_size=args.batch_size, device=device, progress=progress)
    if args.json:
        print(json.dumps(res.as_dict()))
    else:
        print(f"FVD ({res.protocol}): {res.fvd:.4f}  ({res.num_generated} generated, {res.generated_now} new; "
              f"{res.num_real} real; {len(res.classes)} classes)")
    return 0


def run(args) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    cmd = args.eval_command
    if cmd == "fvd":
        from dataclasses import replace

        from .fvd import fvd_folders
        from .protocols import get_protocol

        pre = get_protocol(args.protocol).preprocess
        if args.num_frames is not None:
            pre = replace(pre, num_frames=args.num_frames)
        ext = _extractor(args)
        value = fvd_folders(args.dir_a, args.dir_b, ext, pre, batch_size=args.batch_size, cache_dir=args.cache_dir)
        print(json.dumps({"fvd": value, "protocol": args.protocol}) if args.json else f"FVD: {value:.4f}")
        return 0
    if cmd == "ucf101":
        return run_ucf101(args)
    if cmd == "elo":
        from .elo import elo_by_axis, elo_by_axis_and_aggregate, format_tables, read_votes_csv

        rate = elo_by_axis_and_aggregate if args.aggregate else elo_by_axis
        tables = rate(read_votes_csv(args.votes), num_orderings=args.orderings, k=args.k,
                      initial=args.initial, ci=args.ci, seed=args.seed)
        print(json.dumps({a: t.as_dict() for a, t in tables.items()}, indent=2) if args.json
              else format_tables(tables), end="" if not args.json else "\n")
        return 0
    if cmd == "mv":
        res = run_mv(args)
        if args.json:
            print(json.dumps({"objects": res["objects"], "average": res["average"].as_dict()}, indent=2))
        else:
            print(f"{len(res['objects'])} object(s); per view, averaged over objects:")
            print(res["average"].format(), end="")
        return 0
    if cmd == "serve":
        from .study import load_study, study_from_folders
        from .voting_server import StandaloneServer, VotingApp

        if args.manifest:
            study = load_study(args.manifest)
        elif len(args.model) >= 2:
            dirs = {}
            for spec in args.model:
                name, sep, d = spec.partition("=")
                if not sep:
                    raise ValueError(f"--model {spec!r}: expected NAME=DIR")
                dirs[name] = d
            study = study_from_folders(args.name, dirs, image_dir=args.images, num_checks=args.checks)
        else:
            raise ValueError("serve needs a study manifest or two or more --model NAME=DIR")
        if not 0 <= args.codes <= 1000:
            raise ValueError(f"--codes {args.codes}: expected 0 to 1000 participant codes")
        server = StandaloneServer(VotingApp(study, args.db, token=args.token), args.host, args.port)
        codes = server.app.store.ensure_codes(args.codes)
        print(f"voting page: {server.url}?code=PARTICIPANT_CODE\n"
              f"organiser token: {server.app.token}\n"
              f"leaderboard: {server.url}leaderboard?token={server.app.token}\n"
              f"participant codes ({len(codes)}): {' '.join(codes)}\n"
              f"(Ctrl+C stops; votes are saved as they are cast in {args.db})", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.httpd.server_close()
            server.app.close()
        return 0
    if cmd == "prompts":
        from .ucf101 import ucf101_prompts

        for c, p in ucf101_prompts(args.num):
            print(f"{c}\t{p}")
        return 0
    raise ValueError(f"unknown eval command {cmd!r}")
