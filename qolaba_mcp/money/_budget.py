"""The daily budget's decisions: whether an amount may be held against a principal's spend, and what must age out.

The ledger applies them inside its atomic section (``LedgerStore.reserve``); it stores and sums, this decides."""

from __future__ import annotations

from dataclasses import dataclass

from ..ledger import Reservation
from ..ledger._records import BUDGET_TOLERANCE_USD


@dataclass(frozen=True, kw_only=True)
class DailyBudget:
    """A per-call cap and a daily budget (None: no such limit), as the ledger's BudgetPolicy."""

    daily_budget: float | None
    per_call_cap: float | None

    def decide(self, *, amount: float, spent: float) -> Reservation:
        """Whether ``amount`` may be held, given ``spent``: the principal's spend in the window."""
        cap, budget = self.per_call_cap, self.daily_budget
        if cap is not None and amount > cap + BUDGET_TOLERANCE_USD:
            return Reservation(ok=False, spent_usd=spent, amount=amount, limit_name="per_call", limit_usd=cap)
        if budget is None or spent + amount <= budget + BUDGET_TOLERANCE_USD:
            return Reservation(ok=True, spent_usd=spent, amount=amount)
        return Reservation(ok=False, spent_usd=spent, amount=amount, limit_name="daily", limit_usd=budget)

    def need_to_age_out(self, reservation: Reservation) -> float | None:
        """How much of the window's spend must leave it before a refused amount fits the budget; None when waiting
        never helps (not refused by the budget, or the amount alone is above it)."""
        budget = reservation.limit_usd
        if reservation.limit_name != "daily" or budget is None or reservation.amount > budget + BUDGET_TOLERANCE_USD:
            return None
        return reservation.spent_usd + reservation.amount - budget
