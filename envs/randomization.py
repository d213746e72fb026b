"""Domain randomization: the multipliers a training episode draws from its scenario's ranges.

A scenario's ``randomization:`` section (:class:`~rlscale.envs.scenario.RandomizationConfig`)
declares ranges for the arrival rate, the spot price, the preemption chance and the cold-start
durations. A simulator built with ``randomize=True`` draws one multiplier of each per cluster
at every reset; the kernel applies them where it reads arrivals, prices, preemption chances and
cold-start tables (``dynamics.CS_SCALES``). Without the section, or with ``randomize=False``
(the default, and what evaluation uses), every multiplier is exactly 1 and the scenario runs
as written, bit for bit.

The draws come from a stream of their own, seeded by the episode's kernel seed (which the
cluster's generator has drawn anyway): switching randomization on draws nothing more from the
cluster's generator, so episode windows and the kernel's random stream stay those of the
nominal run, and a seeded env reproduces its multipliers.
"""

from __future__ import annotations

import numpy as np

from rlscale.envs import dynamics as dyn
from rlscale.envs.scenario import RANDOMIZED_SCALES, RandomizationConfig

SCALE_NAMES = RANDOMIZED_SCALES
"""The multipliers, in the order the kernel stores them (``dynamics.SC_*``)."""
assert len(SCALE_NAMES) == dyn.N_SCALES

NOMINAL = np.ones(dyn.N_SCALES)
"""The multipliers of the scenario as written."""
NOMINAL.flags.writeable = False

# tells the multipliers' stream apart from any other stream seeded by the same episode seed
_STREAM_TAG = 0x52414E44  # "RAND"


def draw_scales(config: RandomizationConfig | None, episode_seed: int) -> np.ndarray:
    """One episode's multipliers ([dynamics.N_SCALES], ``SCALE_NAMES`` order).

    Every multiplier takes its own uniform draw, whether or not its range is set, so that
    adding a range to a scenario leaves the other multipliers' draws as they were. A range
    ``[x, x]`` gives exactly ``x``; a range left out gives 1.
    """
    if config is None:
        return NOMINAL.copy()
    u = np.random.default_rng([int(episode_seed), _STREAM_TAG]).random(dyn.N_SCALES)
    scales = NOMINAL.copy()
    for k, name in enumerate(SCALE_NAMES):
        bounds = getattr(config, name)
        if bounds is None:
            continue
        lo, hi = bounds
        if lo == hi:
            scales[k] = lo
        elif config.sampling == "log_uniform":
            scales[k] = min(hi, max(lo, lo * (hi / lo) ** u[k]))
        else:
            scales[k] = min(hi, lo + (hi - lo) * u[k])
    return scales


def scales_dict(scales: np.ndarray) -> dict[str, float]:
    """Multipliers by name, e.g. ``{"rate_scale": 1.1, ...}``."""
    return {name: float(v) for name, v in zip(SCALE_NAMES, scales, strict=True)}


def max_cold_start_scale(config: RandomizationConfig | None) -> float:
    """The largest cold-start multiplier an episode can draw (the lifecycle rings' reach)."""
    if config is None or config.cold_start_scale is None:
        return 1.0
    return float(max(1.0, config.cold_start_scale[1]))
