"""rlscale.serving."""
