"""rlscale.agents: policies (baselines, oracle, PPO) behind one protocol, agents/base.py."""
