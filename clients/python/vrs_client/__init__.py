"""Python client for the video reward-model service (sync and async)."""

from vrs_client.client import APIError, AsyncClient, Client, GroupAdvantages, Options, RankOptions
from vrs_client.retry import Retry
from vrs_client.videos import Frames, Video

__all__ = [
    "AsyncClient",
    "Client",
    "Frames",
    "GroupAdvantages",
    "Options",
    "RankOptions",
    "Retry",
    "APIError",
    "Video",
]
