"""The SLO as a constraint: a Lagrange multiplier on attainment, adapted during training.

The product promises an attainment target (99% of requests within the TTFT and TPOT targets),
not a price per violation. Training therefore solves the constrained problem

    minimize E[cost]   subject to   attainment >= target

through its Lagrangian, ``cost + lambda * (violations - (1 - target) * demand)``. For a fixed
``lambda`` that is the simulator's own reward with ``lambda`` as the price of a violation
(the ``(1 - target) * demand`` term does not depend on the policy's choices beyond drops, so it
is left out of the reward); PPO minimizes it over the policy (the primal step), and after each
rollout the multiplier takes a dual step on the constraint's violation measured in that rollout:

    log lambda  +=  lr * clip((1 - attainment) / (1 - target') - 1, -1, 1)

where ``attainment`` is the last rollout's, or pools the requests of the last ``window``
rollouts. One rollout (``n_steps`` decision steps per env, 2 h at the defaults) measures an
episode's attainment poorly where episodes are long, and on servegen-m-large the price swung
over three orders of magnitude within a run (1e-4 to 0.18 USD), the validation cost with it.
Pooling an episode's worth of rollouts (``window=0`` in the training config:
``ceil(episode_steps / n_steps)``, capped at :data:`MAX_WINDOW`) was tried and did not damp
it (1e-4 to 0.26 USD; three seeds' held-out cost unchanged), so the swing is the primal-dual
loop itself, not the noise of its measurement; the default stays one rollout.

with ``target' = target + margin + offset``. The step is in log space because the right price spans
orders of magnitude across scenarios (a violation of one request on a cluster of one GPU and on
one of forty); the relative error of the miss rate makes the step unit-free, and clipping keeps
one bad rollout from moving the price more than ``e**lr``. Attainment below target raises the
price, attainment above it lowers the price, so cost is only traded for SLO where it binds.
The margin exists because the policy is trained stochastic and served deterministic, and
the two can differ by more than any fixed margin (on servegen-m-large rollouts held 99.9%
while the deterministic policy fell to 98.5% on validation windows). So the constraint is also
enforced where it is promised, on the served policy: after each validation the offset takes an
integral step on the deterministic policy's shortfall, ``offset += target + margin -
validation attainment``, so a served policy below target raises what the rollouts must reach,
and one above it gives the slack back. The step is clipped to half the allowed miss and the
offset to three quarters of it (a rollout target of at most 99.8% for 99.2%): an unclipped
step after one bad validation (96.9%) pinned the rollout target at 99.99%, the price at its
ceiling, and the policy at three times its cost for a million steps.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_WINDOW = 16
"""At most this many rollouts pooled per dual step (an episode of a week would otherwise make
the price answer a change of policy only weeks of rollouts later)."""


def episode_window(episode_steps: int, n_steps: int) -> int:
    """Rollouts that span one training episode per env, at most :data:`MAX_WINDOW`."""
    return max(1, min(MAX_WINDOW, math.ceil(episode_steps / max(1, n_steps))))


@dataclass
class LagrangeMultiplier:
    """The price of one SLO violation in USD, adapted by dual ascent in log space.

    :param price_usd: the current multiplier.
    :param base_target: the attainment the constraint asks for (target + margin); the
        rollouts are steered to it plus ``offset`` (see :meth:`observe_served`).
    :param lr: dual step size in log space.
    :param min_usd: floor of the price.
    :param max_usd: ceiling of the price.
    :param window: rollouts whose requests each dual step pools (see :func:`episode_window`).
    """

    price_usd: float
    base_target: float
    lr: float = 0.2
    min_usd: float = 1e-4
    max_usd: float = 10.0
    window: int = 1
    updates: int = 0
    offset: float = 0.0
    recent: deque = field(default_factory=deque)
    """(good, demand) of the last ``window`` rollouts that saw requests."""

    MAX_TARGET = 0.9999

    def __post_init__(self) -> None:
        if not 0.0 < self.base_target < 1.0:
            raise ValueError(f"attainment target {self.base_target} must be in (0, 1)")
        if self.lr < 0:
            raise ValueError(f"lagrange_lr {self.lr} must be >= 0")
        if self.window < 1:
            raise ValueError(f"lagrange window {self.window} must be >= 1 rollout")
        self.price_usd = min(max(float(self.price_usd), self.min_usd), self.max_usd)

    @property
    def target(self) -> float:
        """What the rollouts' attainment is steered to: the base target plus the offset."""
        return min(self.base_target + self.offset, self.MAX_TARGET)

    def observe_served(self, attainment: float) -> float:
        """An integral step of the offset on the served (deterministic) policy's validation
        attainment; returns the new rollout target."""
        allowed = 1.0 - self.base_target
        step = min(max(self.base_target - float(attainment), -0.5 * allowed), 0.5 * allowed)
        self.offset = min(max(self.offset + step, 0.0), 0.75 * allowed)
        return self.target

    def update(self, good: float, demand: float) -> float:
        """One dual step from a rollout's requests within SLO (``good``) out of ``demand``,
        pooled with the last ``window - 1`` rollouts' requests; returns the new price. A
        rollout that saw no requests leaves it alone."""
        if demand <= 0.0:
            return self.price_usd
        self.recent.append((float(good), float(demand)))
        while len(self.recent) > self.window:
            self.recent.popleft()
        good = sum(g for g, _ in self.recent)
        demand = sum(d for _, d in self.recent)
        miss = max(0.0, 1.0 - good / demand)
        allowed = 1.0 - self.target
        g = min(1.0, max(-1.0, miss / allowed - 1.0))
        self.price_usd = min(
            max(self.price_usd * math.exp(self.lr * g), self.min_usd), self.max_usd
        )
        self.updates += 1
        return self.price_usd

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps."""
        return {
            "price_usd": self.price_usd,
            "updates": self.updates,
            "offset": self.offset,
            "recent": [list(r) for r in self.recent],
            "window": self.window,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's multiplier (the window is the run's config, not restored:
        ``state()`` reports it for the training report)."""
        self.price_usd = float(state["price_usd"])
        self.updates = int(state.get("updates", 0))
        self.offset = float(state.get("offset", 0.0))
        self.recent = deque(tuple(r) for r in state.get("recent", ()))
