"""The model contract (``ModelSpec`` and its parts). Defined in the wire package, which clients
share (``vrs_wire.spec``); re-exported here because it is the models' own vocabulary."""

from vrs_wire.spec import Batching, Dimension, FrameSampling, ModelSpec, Pairwise, Resolution

__all__ = ["Batching", "Dimension", "FrameSampling", "ModelSpec", "Pairwise", "Resolution"]
