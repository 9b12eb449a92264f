"""Reward-model definitions: each model is a spec (data) plus a forward function."""

from models.registry import RewardModel, builtin_models

__all__ = ["RewardModel", "builtin_models"]
