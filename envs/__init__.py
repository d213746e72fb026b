"""rlscale.envs: the simulated GPU inference cluster and its Gymnasium environments.

Importing this package registers ``rlscale/InferenceCluster-v0`` with Gymnasium (single env and
``vector_entry_point``), so ``gym.make("rlscale/InferenceCluster-v0", scenario=...)`` works, as
does ``gym.make("rlscale.envs:rlscale/InferenceCluster-v0")`` without importing first.
"""

from gymnasium.envs.registration import register, registry

from rlscale.envs.scenario import Scenario, ScenarioError, list_scenarios, load_scenario

ENV_ID = "rlscale/InferenceCluster-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="rlscale.envs.env:InferenceClusterEnv",
        vector_entry_point="rlscale.envs.vector:InferenceClusterVectorEnv",
    )

__all__ = ["ENV_ID", "Scenario", "ScenarioError", "list_scenarios", "load_scenario"]
