"""rlscale: a reinforcement-learning autoscaler for GPU inference serving."""

__version__ = "0.1.0"
