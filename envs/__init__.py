"""rlscale.envs."""
