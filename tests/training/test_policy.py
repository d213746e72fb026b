"""The batched MultiDiscrete policy: the distribution SB3 computes head by head, in one piece.

Equality with SB3's ``MultiCategoricalDistribution`` (log-probabilities, entropies, their
gradients, modes, and what is sampled), then a real PPO trained with it, exported to ONNX and
served by onnxruntime, and checkpoints of SB3's own policy loaded into it.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

pytest.importorskip("stable_baselines3")
import torch
from stable_baselines3.common.distributions import MultiCategoricalDistribution

from rlscale.training.policy import (
    BatchedMultiCategoricalDistribution,
    MultiDiscretePolicy,
    load_ppo,
    new_ppo,
)

HEADS = [
    [5, 5, 5, 3, 1, 1],  # rlscale's layout: replica changes, then warm pools (two without)
    [5, 5, 5, 3],
    [2],
    [7, 1, 3, 1, 4],
    [1, 1],  # nothing to choose
]


def _pair(nvec, logits):
    """SB3's distribution and the batched one on the same logits (each its own leaf)."""
    ours_in = logits.clone().requires_grad_()
    theirs_in = logits.clone().requires_grad_()
    ours = BatchedMultiCategoricalDistribution(nvec).proba_distribution(ours_in)
    theirs = MultiCategoricalDistribution(nvec).proba_distribution(theirs_in)
    return ours, ours_in, theirs, theirs_in


def _actions(nvec, n, rng):
    return torch.as_tensor(np.stack([rng.integers(0, k, n) for k in nvec], axis=1)).float()


@pytest.mark.parametrize("nvec", HEADS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_log_prob_entropy_and_gradients_equal_sb3(nvec, dtype):
    rng = np.random.default_rng(sum(nvec))
    torch.manual_seed(len(nvec))
    for scale in (1.0, 4.0):  # near-uniform heads and peaked ones
        logits = (torch.randn(256, sum(nvec), dtype=torch.float64) * scale).to(dtype)
        actions = _actions(nvec, 256, rng)
        ours, ours_in, theirs, theirs_in = _pair(nvec, logits)
        lp, ent = ours.log_prob(actions), ours.entropy()
        lp_ref, ent_ref = theirs.log_prob(actions), theirs.entropy()
        assert lp.shape == ent.shape == (256,)
        # float64: the same math to 1e-12; float32 (what PPO runs): within 1e-6, plus the few
        # units in the last place that summing in another order costs on values of about 5
        tol, rtol = (1e-6, 1e-6) if dtype == torch.float32 else (1e-12, 0.0)
        torch.testing.assert_close(lp, lp_ref, atol=tol, rtol=rtol)
        torch.testing.assert_close(ent, ent_ref, atol=tol, rtol=rtol)
        # PPO's loss: the ratio's log-probabilities and the entropy bonus
        weights = torch.randn(256, dtype=dtype)
        ((lp * weights).sum() + ent.sum()).backward()
        ((lp_ref * weights).sum() + ent_ref.sum()).backward()
        assert torch.isfinite(ours_in.grad).all()
        torch.testing.assert_close(ours_in.grad, theirs_in.grad, atol=10 * tol, rtol=rtol)
        assert (ours.mode() == theirs.mode()).all()


def test_one_choice_heads_score_zero_and_are_always_zero():
    nvec = [1, 4, 1]
    logits = torch.randn(64, 6) * 3
    dist = BatchedMultiCategoricalDistribution(nvec).proba_distribution(logits)
    single = BatchedMultiCategoricalDistribution([4]).proba_distribution(logits[:, 1:5])
    actions = _actions(nvec, 64, np.random.default_rng(0))
    torch.testing.assert_close(dist.log_prob(actions), single.log_prob(actions[:, 1:2]))
    torch.testing.assert_close(dist.entropy(), single.entropy())
    drawn = dist.sample()
    assert drawn.shape == (64, 3) and drawn.dtype == torch.int64
    assert (drawn[:, [0, 2]] == 0).all() and (drawn[:, 1] < 4).all()
    nothing = BatchedMultiCategoricalDistribution([1, 1]).proba_distribution(torch.randn(5, 2))
    assert (nothing.sample() == 0).all() and (nothing.mode() == 0).all()
    assert (nothing.entropy() == 0).all() and (nothing.log_prob(nothing.sample()) == 0).all()


def test_samples_follow_each_heads_probabilities():
    nvec = [5, 3, 1, 2]
    torch.manual_seed(0)
    row = torch.randn(1, sum(nvec)) * 1.5
    n = 40_000
    dist = BatchedMultiCategoricalDistribution(nvec).proba_distribution(row.expand(n, -1))
    drawn = dist.sample().numpy()
    reference = MultiCategoricalDistribution(nvec).proba_distribution(row)
    for head, (k, cat) in enumerate(zip(nvec, reference.distribution, strict=True)):
        p = cat.probs[0].numpy()
        freq = np.bincount(drawn[:, head], minlength=k) / n
        # 5 standard errors of a frequency: a wrong head or an off-by-one fails by far more
        assert np.abs(freq - p).max() < 5 * np.sqrt(0.25 / n), (head, freq, p)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="action_dims"):
        BatchedMultiCategoricalDistribution([3, 0])
    with pytest.raises(ValueError, match="action_dims"):
        BatchedMultiCategoricalDistribution([])


@pytest.fixture
def quick_env(quick_raw, tmp_path):
    from stable_baselines3.common.vec_env import VecNormalize

    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv

    path = tmp_path / "quick-policy.yaml"
    path.write_text(yaml.safe_dump(quick_raw("quick-policy")))
    venv = InferenceClusterVecEnv(4, scenario=str(path))
    venv.seed(0)
    return venv, VecNormalize(venv, gamma=0.99)


PPO_SMALL = {
    "n_steps": 64,
    "batch_size": 128,
    "n_epochs": 2,
    "seed": 0,
    "device": "cpu",
    "policy_kwargs": {"net_arch": [32, 32]},
}


def test_ppo_trains_and_the_onnx_export_serves_the_full_action(quick_env, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rlscale.agents.onnx_policy import load_onnx_policy
    from rlscale.training.export import export_ppo

    venv, norm = quick_env
    nvec = [int(n) for n in venv.action_space.nvec]
    assert 1 in nvec and max(nvec) > 1  # the quick scenario has pools without a warm pool
    model = new_ppo(norm, PPO_SMALL)
    assert isinstance(model.policy, MultiDiscretePolicy)
    assert isinstance(model.policy.action_dist, BatchedMultiCategoricalDistribution)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(512)  # two rollouts, two updates each
    assert model.num_timesteps == 512
    changed = [k for k, v in model.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert "action_net.weight" in changed and "value_net.weight" in changed
    for name, value in model.logger.name_to_value.items():
        assert np.isfinite(value), name
    # the export (checked against model.predict inside export_ppo) serves every head
    folder = export_ppo(model, venv.sim, tmp_path / "policy", vec_normalize=norm)
    policy = load_onnx_policy(folder, pools=venv.sim.pool_names)
    obs = venv.reset()
    served = policy.act(obs)
    predicted, _ = model.predict(norm.normalize_obs(obs), deterministic=True)
    assert served.shape == (4, len(nvec)) and (served == predicted).all()
    assert (served[:, [i for i, n in enumerate(nvec) if n == 1]] == 0).all()


def test_sb3_checkpoints_load_into_the_batched_policy(quick_env, tmp_path):
    from stable_baselines3 import PPO

    venv, norm = quick_env
    old = PPO("MlpPolicy", norm, **PPO_SMALL)
    old.learn(256)
    old.save(tmp_path / "model.zip")
    model = load_ppo(tmp_path / "model.zip", norm)
    assert isinstance(model.policy, MultiDiscretePolicy)
    assert model.num_timesteps == old.num_timesteps
    for key, value in old.policy.state_dict().items():
        assert torch.equal(model.policy.state_dict()[key], value), key
    obs = torch.as_tensor(norm.normalize_obs(venv.reset()))
    actions = _actions(venv.action_space.nvec, len(obs), np.random.default_rng(1))
    with torch.no_grad():
        v_old, lp_old, ent_old = old.policy.evaluate_actions(obs, actions)
        v_new, lp_new, ent_new = model.policy.evaluate_actions(obs, actions)
    torch.testing.assert_close(v_new, v_old)
    torch.testing.assert_close(lp_new, lp_old, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent_new, ent_old, atol=1e-6, rtol=0)
    model.learn(256, reset_num_timesteps=False)  # and training goes on from it
    assert model.num_timesteps == old.num_timesteps + 256


def test_a_ppo_update_learns_what_sb3s_policy_learns(quick_env):
    """From the same weights and the same rollout, one PPO update (2 epochs of minibatches)
    moves the batched policy's weights where it moves SB3's."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure

    from rlscale.training.train import hold_prior

    venv, norm = quick_env
    settings = {**PPO_SMALL, "ent_coef": 0.05}  # the entropy bonus in the loss too
    sb3 = PPO("MlpPolicy", norm, **settings)
    hold_prior(sb3, venv.sim.noop_action(), 0.8)  # away from uniform, where entropy is flat
    start = {k: v.clone() for k, v in sb3.policy.state_dict().items()}
    sb3.learn(256)  # fills the rollout buffer (and updates once, which is undone below)
    updated = {}
    for name, model in (("sb3", sb3), ("batched", new_ppo(norm, settings))):
        model.policy.load_state_dict(start)
        model.policy.optimizer = torch.optim.Adam(
            model.policy.parameters(), lr=model.learning_rate, eps=1e-5
        )
        model.rollout_buffer = sb3.rollout_buffer
        model._current_progress_remaining = 1.0
        model.set_logger(configure(None, []))
        np.random.seed(0)  # the minibatches' shuffle
        model.train()
        updated[name] = model.policy.state_dict()
    moved = 0.0
    for key, value in updated["sb3"].items():
        torch.testing.assert_close(updated["batched"][key], value, atol=1e-5, rtol=1e-4)
        moved = max(moved, float((value - start[key]).abs().max()))
    assert moved > 1e-3  # the update did move the weights
