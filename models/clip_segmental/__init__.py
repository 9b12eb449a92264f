"""`clip-segmental`: CLIP-family frame rewards (InstructVideo segmental, VLM-RM goal-baseline)."""

from models.clip_segmental.model import CheckpointError, SegmentalConfig, load, make_spec, read_spec

__all__ = ["CheckpointError", "SegmentalConfig", "load", "make_spec", "read_spec"]
