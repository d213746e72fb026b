"""rlscale.training."""
