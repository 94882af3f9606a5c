"""Generation engines behind one interface (see ``base.RolloutEngine``)."""

from rlreason.rollout.base import RolloutEngine, Sample, SamplingConfig

__all__ = ["RolloutEngine", "Sample", "SamplingConfig"]
