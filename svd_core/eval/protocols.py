"""Evaluation protocol presets: the paper's zero-shot UCF-101 FVD setup (Sec. 4.3 / App. E) and its prompts."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .features import ClipPreprocess

# The 101 UCF-101 action classes (classInd.txt order).
UCF101_CLASSES = (
    "ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching",
    "BaseballPitch", "Basketball", "BasketballDunk", "BenchPress", "Biking", "Billiards", "BlowDryHair",
    "BlowingCandles", "BodyWeightSquats", "Bowling", "BoxingPunchingBag", "BoxingSpeedBag", "BreastStroke",
    "BrushingTeeth", "CleanAndJerk", "CliffDiving", "CricketBowling", "CricketShot", "CuttingInKitchen",
    "Diving", "Drumming", "Fencing", "FieldHockeyPenalty", "FloorGymnastics", "FrisbeeCatch", "FrontCrawl",
    "GolfSwing", "Haircut", "Hammering", "HammerThrow", "HandstandPushups", "HandstandWalking",
    "HeadMassage", "HighJump", "HorseRace", "HorseRiding", "HulaHoop", "IceDancing", "JavelinThrow",
    "JugglingBalls", "JumpingJack", "JumpRope", "Kayaking", "Knitting", "LongJump", "Lunges",
    "MilitaryParade", "Mixing", "MoppingFloor", "Nunchucks", "ParallelBars", "PizzaTossing", "PlayingCello",
    "PlayingDaf", "PlayingDhol", "PlayingFlute", "PlayingGuitar", "PlayingPiano", "PlayingSitar",
    "PlayingTabla", "PlayingViolin", "PoleVault", "PommelHorse", "PullUps", "Punch", "PushUps", "Rafting",
    "RockClimbingIndoor", "RopeClimbing", "Rowing", "SalsaSpin", "ShavingBeard", "Shotput", "SkateBoarding",
    "Skiing", "Skijet", "SkyDiving", "SoccerJuggling", "SoccerPenalty", "StillRings", "SumoWrestling",
    "Surfing", "Swing", "TableTennisShot", "TaiChi", "TennisSwing", "ThrowDiscus", "TrampolineJumping",
    "Typing", "UnevenBars", "VolleyballSpiking", "WalkingWithDog", "WallPushups", "WritingOnBoard", "YoYo",
)
assert len(UCF101_CLASSES) == 101


@dataclass(frozen=True)
class FVDProtocol:
    """A named FVD setup: how samples are generated and how clips are preprocessed before I3D."""

    name: str
    preprocess: ClipPreprocess
    sample_size: tuple[int, int] | None = None  # (h, w) the generator renders
    sample_fps: float | None = None
    description: str = ""


# Paper (Sec. 4.3, App. E): 16 frames at 25 fps, samples rendered at 320x576, downsampled with antialiasing to
# 240x432 (short side 240), center-cropped to 240x320 (UCF-101's frame size), I3D features, 101 classes balanced.
UCF101 = FVDProtocol(
    name="ucf101",
    preprocess=ClipPreprocess(num_frames=16, fps=25.0, resize_short=240, crop=(240, 320)),
    sample_size=(320, 576),
    sample_fps=25.0,
    description="zero-shot UCF-101 FVD: 16 frames @ 25 fps, 320x576 -> 240x432 (antialiased) -> crop 240x320",
)

PROTOCOLS = {"ucf101": UCF101, "none": FVDProtocol("none", ClipPreprocess(num_frames=None))}


def get_protocol(name: str) -> FVDProtocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown FVD protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def action_to_prompt(action: str) -> str:
    """'ApplyEyeMakeup' -> 'apply eye makeup'; 'YoYo' -> 'yo yo'."""
    return " ".join(w.lower() for w in re.findall(r"[A-Z][a-z]*|[a-z]+|\d+", action))
