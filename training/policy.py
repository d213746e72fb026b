"""The policy PPO trains: SB3's actor-critic MLP with all ``MultiDiscrete`` heads in one tensor.

The action space has one head per pool for the replica change and one per pool for the warm
pool (``MultiDiscrete([5, 5, 5, 3, 1, 1])``: size-one heads for pools without a warm pool).
stable-baselines3's ``MultiCategoricalDistribution`` splits the logits and builds one torch
``Categorical`` per head, so every policy call (each rollout step and each minibatch of an
update) pays a few dozen small torch ops and argument validations per head: in a profile of
``rlscale bench train`` that was PPO's extra cost per step over CartPole's single head.

:class:`BatchedMultiCategoricalDistribution` is the same distribution computed in one piece:
the logits are laid out as ``[batch, heads, widest head]`` with the padding at ``-inf``, so
log-probabilities come from one ``logsumexp``, a sample from one ``multinomial``, ``log_prob``
from one ``gather`` and the entropy from one masked sum, whatever the number of heads. It
takes the same flat logits from the same output layer, so weights, :func:`hold_prior
<rlscale.training.train.hold_prior>`, the ONNX export (argmax per head) and checkpoints of
either policy class are interchangeable; ``log_prob`` and ``entropy`` equal SB3's (tested to
1e-6), and samples follow the same distribution (not the same random stream).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import MultiCategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy

_Self = TypeVar("_Self", bound="BatchedMultiCategoricalDistribution")


class BatchedMultiCategoricalDistribution(MultiCategoricalDistribution):
    """Independent categorical heads of sizes ``action_dims``, as one padded tensor.

    A subclass of SB3's ``MultiCategoricalDistribution`` (the policy treats it as one: flat
    logits in, ``[batch, heads]`` actions out); ``distribution`` stays unset, since there are no
    per-head ``Categorical`` objects.

    :param action_dims: the size of each head (``MultiDiscrete.nvec``), each at least 1.
    """

    def __init__(self, action_dims: list[int]) -> None:
        super().__init__([int(n) for n in action_dims])
        dims = np.asarray(self.action_dims, dtype=np.int64)
        if dims.ndim != 1 or dims.size == 0 or (dims < 1).any():
            raise ValueError(f"action_dims={list(action_dims)} must be a list of sizes >= 1")
        # a head of one choice always picks it (log-probability and entropy 0): only the
        # others enter the padded tensor, and its action 0 is put back in samples and modes
        real = np.flatnonzero(dims > 1)
        widest = int(dims[real].max()) if real.size else 1
        starts = np.concatenate([[0], np.cumsum(dims)[:-1]])[real]
        sizes = dims[real]
        slot = np.arange(widest)
        # where each padded slot reads the flat logits from: its head's logit, or the appended
        # -inf column (index sum(dims)) past the head's size
        index = np.where(slot < sizes[:, None], starts[:, None] + slot, dims.sum())
        self._index = torch.as_tensor(index.reshape(-1))
        self._padding = torch.as_tensor(slot >= sizes[:, None])  # [real heads, widest]
        self._real = torch.as_tensor(real) if real.size < dims.size else None
        self._shape = (real.size, widest)
        self.logits: torch.Tensor  # [batch, real heads, widest], padding at -inf
        self.log_probs: torch.Tensor  # normalized per head

    def proba_distribution(self: _Self, action_logits: torch.Tensor) -> _Self:
        """Take the flat logits ``[batch, sum(action_dims)]`` of the policy's output layer."""
        pad = action_logits.new_full((action_logits.shape[0], 1), float("-inf"))
        flat = torch.cat([action_logits, pad], dim=1).index_select(1, self._index)
        self.logits = flat.view(action_logits.shape[0], *self._shape)
        self.log_probs = self.logits - self.logits.logsumexp(dim=-1, keepdim=True)
        return self

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Sum over heads of each head's log-probability of ``actions`` ``[batch, heads]``."""
        chosen = actions.long()
        if self._real is not None:
            chosen = chosen.index_select(1, self._real)
        return self.log_probs.gather(-1, chosen.unsqueeze(-1)).sum(dim=(1, 2))

    def entropy(self) -> torch.Tensor:
        """Sum over heads of each head's entropy (padding contributes nothing)."""
        log_p = self.log_probs.masked_fill(self._padding, 0.0)
        return -(log_p.exp() * log_p).sum(dim=(1, 2))  # exp(0) * 0 on the padding

    def sample(self) -> torch.Tensor:
        """One action per row, every head drawn from its own categorical."""
        batch, heads = self.logits.shape[0], self._shape[0]
        if heads == 0:  # every head has one choice
            return self._all_heads(self.logits.new_zeros((batch, 0), dtype=torch.int64))
        probs = self.log_probs.exp().reshape(batch * heads, self._shape[1])
        return self._all_heads(torch.multinomial(probs, 1).view(batch, heads))

    def mode(self) -> torch.Tensor:
        """Each head's most likely choice (argmax of the raw logits, as the ONNX export)."""
        return self._all_heads(self.logits.argmax(dim=-1))

    def _all_heads(self, chosen: torch.Tensor) -> torch.Tensor:
        """``[batch, heads]`` actions from the choices of the heads of more than one choice."""
        if self._real is None:
            return chosen
        out = chosen.new_zeros((chosen.shape[0], len(self.action_dims)))
        return out.index_copy_(1, self._real, chosen)


class MultiDiscretePolicy(ActorCriticPolicy):
    """SB3's ``MlpPolicy`` (``ActorCriticPolicy``) with :class:`BatchedMultiCategoricalDistribution`
    on a one-dimensional ``MultiDiscrete`` action space; any other space is SB3's own."""

    def _build(self, lr_schedule: Any) -> None:
        space = self.action_space
        if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
            self.action_dist = BatchedMultiCategoricalDistribution(list(space.nvec))
        super()._build(lr_schedule)


def new_ppo(env: Any, ppo_kwargs: dict[str, Any]) -> Any:
    """A stable-baselines3 ``PPO`` with :class:`MultiDiscretePolicy` on ``env`` (what training
    and ``rlscale bench train`` build)."""
    from stable_baselines3 import PPO

    return PPO(MultiDiscretePolicy, env, **ppo_kwargs)


def load_ppo(path: Any, env: Any) -> Any:
    """A PPO saved with ``model.save`` on ``env``, as :class:`MultiDiscretePolicy`.

    Checkpoints saved before training used this class hold SB3's ``ActorCriticPolicy``: the
    same layers and parameter names, so their weights load into this class unchanged.
    """
    from stable_baselines3 import PPO

    return PPO.load(
        path, env=env, device="cpu", custom_objects={"policy_class": MultiDiscretePolicy}
    )
