"""rlscale.agents."""
