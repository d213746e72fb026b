"""rlscale.experiments."""
