"""Guidance nodes: per-frame classifier-free guidance scales (SVD paper App. D.4.1), one node per guider kind."""
from __future__ import annotations

from comfy_api.latest import io

from svd_core.guidance import FUSINGS, Guidance

from ._comfy import PREFIX, SVDGuidance, bad_input, check_inputs

GUIDANCE_TOOLTIP = "Per-frame guidance settings; connect to the SVD Sampler's guidance input."
MIN_TOOLTIP = "Guidance scale at the low end of the curve (1.0 = no guidance)."
MAX_TOOLTIP = "Guidance scale at the high end of the curve."


def _scale(name: str, default: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=0.0, max=30.0, step=0.05, tooltip=tooltip)


def _make(cls, **kwargs) -> io.NodeOutput:
    try:
        return io.NodeOutput(Guidance(**kwargs))
    except ValueError as exc:  # engine message names the value; add the node
        raise ValueError(f"{cls.ID}: {exc}") from None


class LinearGuidance(io.ComfyNode):
    ID = PREFIX + "LinearGuidance"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Linear Guidance",
            category="svd/guidance",
            description=("Guidance rising linearly from min_scale at the first frame to max_scale at the last "
                         "(SVD / SVD-XT reference: 1.0 -> 2.5, XT 1.5 -> 3.0)."),
            inputs=[_scale("min_scale", 1.0, "Guidance scale at the first frame."),
                    _scale("max_scale", 2.5, "Guidance scale at the last frame.")],
            outputs=[SVDGuidance.Output(display_name="guidance", tooltip=GUIDANCE_TOOLTIP)],
        )

    @classmethod
    def execute(cls, min_scale: float, max_scale: float) -> io.NodeOutput:
        return _make(cls, kind="linear", min_scale=min_scale, max_scale=max_scale)


class TriangleGuidance(io.ComfyNode):
    ID = PREFIX + "TriangleGuidance"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Triangle Guidance",
            category="svd/guidance",
            description=("Triangle-wave guidance (SV3D reference): min_scale at both ends, max_scale in the middle "
                         "for period 1; several periods are fused elementwise."),
            inputs=[
                _scale("min_scale", 1.0, MIN_TOOLTIP),
                _scale("max_scale", 2.5, MAX_TOOLTIP),
                io.String.Input("period", default="1.0",
                                tooltip="Wave period as a fraction of the clip; one number or a comma list (e.g. 1.0, 0.5)."),
                io.Combo.Input("period_fusing", options=list(FUSINGS), default="max",
                               tooltip="How several periods' waves are combined per frame."),
            ],
            outputs=[SVDGuidance.Output(display_name="guidance", tooltip=GUIDANCE_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, period: str, period_fusing: str) -> bool | str:
        ok = check_inputs(cls, period_fusing=period_fusing)
        if ok is not True:
            return ok
        try:
            _periods(period)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, min_scale: float, max_scale: float, period: str, period_fusing: str) -> io.NodeOutput:
        return _make(cls, kind="triangle", min_scale=min_scale, max_scale=max_scale, period=_periods(period),
                     period_fusing=period_fusing)


def _periods(text: str) -> float | tuple[float, ...]:
    parts = [p for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if not values or any(not v > 0 for v in values):
        raise bad_input(PREFIX + "TriangleGuidance", "period",
                        f"expected a number > 0 or a comma list of them, got {text!r}")
    return values[0] if len(values) == 1 else values


class TrapezoidGuidance(io.ComfyNode):
    ID = PREFIX + "TrapezoidGuidance"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Trapezoid Guidance",
            category="svd/guidance",
            description=("Trapezoid guidance as the reference's TrapezoidPredictionGuider: the first "
                         "int(num_frames * edge_perc) frames rise from min_scale to max_scale, the middle frames get "
                         "1.0 (no guidance), the last ones fall back. For a ramp that holds max_scale in the middle "
                         "use SVD Ramp-Hold Guidance."),
            inputs=[
                _scale("min_scale", 1.0, "Guidance scale at the first and last frame."),
                _scale("max_scale", 2.5, "Guidance scale at the top of each edge (the middle frames get 1.0)."),
                io.Float.Input("edge_perc", default=0.1, min=0.0, max=0.5, step=0.01,
                               tooltip="Fraction of the frames in each edge, rounded down (reference default 0.1)."),
            ],
            outputs=[SVDGuidance.Output(display_name="guidance", tooltip=GUIDANCE_TOOLTIP)],
        )

    @classmethod
    def execute(cls, min_scale: float, max_scale: float, edge_perc: float) -> io.NodeOutput:
        return _make(cls, kind="trapezoid", min_scale=min_scale, max_scale=max_scale, edge_perc=edge_perc)


class RampHoldGuidance(io.ComfyNode):
    ID = PREFIX + "RampHoldGuidance"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Ramp-Hold Guidance",
            category="svd/guidance",
            description=("Ramp-and-hold guidance: rises from min_scale over the first `ramp` fraction of the clip, "
                         "holds max_scale, and falls back over the last `ramp` fraction."),
            inputs=[
                _scale("min_scale", 1.0, MIN_TOOLTIP),
                _scale("max_scale", 2.5, MAX_TOOLTIP),
                io.Float.Input("ramp", default=0.25, min=0.01, max=0.5, step=0.01,
                               tooltip="Fraction of the clip each slope takes (0 < ramp <= 0.5; 0.5 is a triangle)."),
            ],
            outputs=[SVDGuidance.Output(display_name="guidance", tooltip=GUIDANCE_TOOLTIP)],
        )

    @classmethod
    def execute(cls, min_scale: float, max_scale: float, ramp: float) -> io.NodeOutput:
        return _make(cls, kind="ramp_hold", min_scale=min_scale, max_scale=max_scale, ramp=ramp)


class VanillaGuidance(io.ComfyNode):
    ID = PREFIX + "VanillaGuidance"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Vanilla Guidance",
            category="svd/guidance",
            description="Plain classifier-free guidance: the same scale on every frame.",
            inputs=[_scale("scale", 2.5, "Guidance scale on every frame (1.0 = no guidance).")],
            outputs=[SVDGuidance.Output(display_name="guidance", tooltip=GUIDANCE_TOOLTIP)],
        )

    @classmethod
    def execute(cls, scale: float) -> io.NodeOutput:
        return _make(cls, kind="vanilla", min_scale=scale, max_scale=scale)


NODES = [LinearGuidance, TriangleGuidance, TrapezoidGuidance, RampHoldGuidance, VanillaGuidance]
