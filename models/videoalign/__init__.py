"""`videoalign`: VideoReward (KwaiVGI/VideoAlign) served from its published checkpoint layout."""

from models.videoalign.checkpoint import CheckpointError
from models.videoalign.model import load, make_spec, read_spec, video_patches

__all__ = ["CheckpointError", "load", "make_spec", "read_spec", "video_patches"]
