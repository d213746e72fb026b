"""A spend budget: the one schema the decision service's ``--budgets`` file and a scenario's
``budgets:`` section share, and the UTC periods both count spend in.

A budget is a limit in USD per period (an hour, a day or a calendar month, UTC), on all spend
or on one tenant's, on all clusters or one. The service reports where each stands
(:mod:`rlscale.serving.budgets`); a scenario may also observe it, charge a penalty on spend
over it, or cap spend at it (:mod:`rlscale.envs.budgets`).
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Period = Literal["hour", "day", "month"]
"""A budget's period (UTC; a month is the calendar month)."""

PERIODS: tuple[str, ...] = get_args(Period)


class BudgetConfig(BaseModel):
    """One spend limit."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    period: Period = Field(description="hour, day or calendar month (UTC)")
    limit_usd: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    tenant: str | None = Field(None, max_length=128, description="one tenant's spend; None: all")
    cluster: str | None = Field(None, max_length=128, description="one cluster; None: all")


def period_bounds(time_s: float, period: Period) -> tuple[float, float]:
    """The UTC period holding ``time_s``: its start and end (unix s)."""
    # from the whole second: datetime rounds a float to the microsecond, which a time just
    # before a boundary rounds up to it (a period starting after the time it holds)
    t = dt.datetime.fromtimestamp(math.floor(time_s), dt.UTC)
    if period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 3600.0
    if period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 86400.0
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(t.year, t.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400.0
