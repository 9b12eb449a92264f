"""Backends run model forwards on batches. The gateway cannot tell them apart."""

from service.backends.base import Backend, FrameBatch

__all__ = ["Backend", "FrameBatch"]
