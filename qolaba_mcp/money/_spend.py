"""Spend control: the price of a call before it is made, the caps it must pass, and what the caller is told.

The money itself is kept by the ledger (``reserve``/``settle``/``release``, atomic across replicas); this module
decides what a call is estimated at, whether a cap refuses it before anything is written, and words every refusal
so an agent knows the limit, what has been spent, the estimate and what to do. It knows nothing of MCP.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from .._config import Settings
from .._errors import QolabaError
from ..api._catalog import Catalog, ModelInfo
from ..api._live import estimate_usd
from ..ledger import Reservation


class SpendRefusedError(QolabaError):
    """A call refused by a spend limit or by the user, before anything was submitted or charged."""


@dataclass(frozen=True, kw_only=True)
class Quote:
    """What a call would cost: the model's price at the quality asked for, times the images."""

    model: str
    info: ModelInfo | None
    quality: str | None
    images: int
    estimate_usd: float | None

    @property
    def source(self) -> str:
        return self.info.price_source if self.info is not None else "unknown"

    def describe(self) -> str:
        """``2 images of vertex/nano-banana-pro at 2K``."""
        count = f"{self.images} image{'s' if self.images != 1 else ''}"
        quality = self.quality or (self.info.default_quality if self.info is not None else None)
        return f"{count} of {self.model}" + (f" at {quality}" if quality else "")


def quote(catalog: Catalog, *, model: str, quality: str | None, num_images: int | None) -> Quote:
    """The estimate for a call, from the live catalogue when it has the model.

    None (unknown) when nothing prices it, and when the price is not a finite positive number or the product
    overflows: a $0 (or negative, or infinite) price would otherwise pass every cap and budget, so it is held to
    them as an unknown price is: refused while a cap applies, put to the user above the confirmation threshold.
    """
    info = catalog.get(model)
    images = num_images or 1
    estimate = estimate_usd(info, quality, images) if info is not None else None
    if estimate is not None and not (math.isfinite(estimate) and estimate > 0):
        estimate = None
    return Quote(model=model, info=info, quality=quality, images=images, estimate_usd=estimate)


def usd(amount: float | None) -> str:
    """Money as people read it: dollars and cents, with up to four places when a price has fractions of a cent."""
    if amount is None or not math.isfinite(amount):
        return "unknown"
    if abs(round(amount, 2) - amount) < 1e-9:
        return f"${amount:,.2f}"
    return f"${amount:,.4f}".rstrip("0")


def limits_active(settings: Settings) -> bool:
    return settings.daily_budget_usd is not None or settings.max_cost_per_call_usd is not None


def check_caps(settings: Settings, quote: Quote, *, max_cost_usd: float | None) -> str | None:
    """Why a call must be refused before submitting by a cap that needs no ledger (None: it may go on).

    An unpriced model cannot be held to a cap, so it is refused whenever a cap applies to the call.
    """
    caps = [
        (settings.max_cost_per_call_usd, "the per-call cap (QOLABA_MAX_COST_PER_CALL_USD)"),
        (max_cost_usd, "max_cost_usd"),
    ]
    if quote.estimate_usd is None:
        if limits_active(settings) or max_cost_usd is not None:
            return (
                f"model: the price of {quote.describe()} is not known (neither the live model list nor the built-in "
                "catalogue prices it at that quality), so the spend limits cannot be kept. Nothing was submitted. "
                "Pick a model and quality that list_models shows a price for."
            )
        return None
    for cap, name in caps:
        if cap is not None and quote.estimate_usd > cap + 1e-9:
            fix = (
                "raise max_cost_usd only if your user agreed to this price, or use" if name == "max_cost_usd" else "use"
            )
            return (
                f"{'max_cost_usd' if name == 'max_cost_usd' else 'cost'}: {quote.describe()} is estimated at "
                f"{usd(quote.estimate_usd)}, above {name} of {usd(cap)}. Nothing was submitted. To go on, {fix} "
                "fewer images, a lower quality or a cheaper model (list_models shows prices)."
            )
    return None


def refusal(reservation: Reservation, quote: Quote, *, now: float | None = None) -> str:
    """The text of a call the ledger's reservation refused: limit, spend so far, estimate, and when room frees up."""
    head = f"Refused before submitting: {quote.describe()} is estimated at {usd(reservation.amount)}"
    if reservation.limit_name == "per_call":
        return (
            f"{head}, above the per-call cap of {usd(reservation.limit_usd)} (QOLABA_MAX_COST_PER_CALL_USD). Nothing "
            "was submitted or charged. Use fewer images, a lower quality or a cheaper model."
        )
    budget = reservation.limit_usd or 0.0
    room = max(budget - reservation.spent_usd, 0.0)
    text = (
        f"{head}; {usd(reservation.spent_usd)} of the daily budget of {usd(budget)} (QOLABA_DAILY_BUDGET_USD, "
        f"the last 24 hours) is already spent or held, leaving {usd(room)}. Nothing was submitted or charged."
    )
    if reservation.frees_at is None:
        return text + " This call alone is above the budget: use fewer images, a lower quality or a cheaper model."
    return text + (
        f" Room for it frees up at {when(reservation.frees_at)} ({_in(reservation.frees_at - (now or time.time()))}); "
        "until then only a cheaper call fits. Tell your user rather than retrying."
    )


def when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _in(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    if minutes < 60:
        return f"in {minutes} min"
    return f"in {minutes // 60} h {minutes % 60:02d} min"


class SpendApproval(BaseModel):
    """The form the user sees before a call above QOLABA_CONFIRM_ABOVE_USD.

    Only ``approve: true`` spends: the box starts unticked, and an answer without it (``{}``, ``{"ok": false}``)
    is a decline. Strict, so a string such as ``"yes"`` is not read as a yes either.
    """

    approve: bool = Field(
        default=False, strict=True, title="Approve", description="Tick to go ahead and pay for this generation."
    )


def approval_question(quote: Quote, *, spent_24h: float | None, budget: float | None) -> str:
    """What the user is asked. Only figures that stay put between rounds (cents), so it renders the same."""
    spent = usd(round(spent_24h, 2)) if spent_24h is not None else "not tracked (the ledger is off)"
    text = (
        f"Approve a paid image generation? {quote.describe()}, estimated {usd(quote.estimate_usd)} "
        f"(price source: {quote.source}). Spent in the last 24 hours: {spent}"
    )
    if budget is not None:
        text += f" of a daily budget of {usd(budget)}"
    return text + "."


def not_confirmed(quote: Quote, action: str) -> str:
    verb = "declined" if action == "decline" else "dismissed"
    return (
        f"The user {verb} the spend of {usd(quote.estimate_usd)} for {quote.describe()}: nothing was submitted or "
        "charged. Ask your user what to do instead; do not retry the same call."
    )


def cannot_ask(quote: Quote, threshold: float) -> str:
    if quote.estimate_usd is None:
        return (
            f"model: the price of {quote.describe()} is not known, this server confirms calls above "
            f"{usd(threshold)} with the user, and this client cannot show the user a confirmation. Nothing was "
            "submitted. Pick a model and quality that list_models shows a price for."
        )
    return (
        f"max_cost_usd: {quote.describe()} is estimated at {usd(quote.estimate_usd)}, above the {usd(threshold)} "
        "this server confirms with the user, and this client cannot show the user a confirmation. Nothing was "
        f"submitted. Ask your user whether to spend {usd(quote.estimate_usd)}; if they agree, call again with "
        f"max_cost_usd set to at least {quote.estimate_usd:g}."
    )


class SpendWindow(BaseModel):
    total_usd: float = Field(description="Spent or held in the window, USD.")
    by_model: dict[str, float] = Field(default_factory=dict, description="USD per model id.")


class LedgerSpend(BaseModel):
    """What the ledger's ``spend_report`` sums: a principal's spend over the last 24 hours and 30 days."""

    last_24h: SpendWindow
    last_30d: SpendWindow


class SpendReport(BaseModel):
    """The result of get_spend: this caller's spend and the limits that apply to it."""

    last_24h: SpendWindow
    last_30d: SpendWindow
    daily_budget_usd: float | None = Field(default=None, description="QOLABA_DAILY_BUDGET_USD; null: none.")
    remaining_usd: float | None = Field(default=None, description="Room left in the budget now; null: no budget.")
    max_cost_per_call_usd: float | None = None
    confirm_above_usd: float | None = None

    @classmethod
    def build(cls, report: dict[str, Any], settings: Settings, *, model: str | None = None) -> SpendReport:
        """From a ledger spend report; ``model`` narrows the windows to that model (the room left stays the
        budget's, which counts every model)."""
        sums = LedgerSpend.model_validate(report)  # the ledger's sums, checked once at the boundary
        day, month = sums.last_24h, sums.last_30d
        budget = settings.daily_budget_usd
        room = None if budget is None else round(max(budget - day.total_usd, 0.0), 6)
        if model is not None:
            day, month = (
                SpendWindow(total_usd=window.by_model.get(model, 0.0), by_model={model: window.by_model[model]})
                if model in window.by_model
                else SpendWindow(total_usd=0.0)
                for window in (day, month)
            )
        return cls(
            last_24h=day,
            last_30d=month,
            daily_budget_usd=budget,
            remaining_usd=room,
            max_cost_per_call_usd=settings.max_cost_per_call_usd,
            confirm_above_usd=settings.confirm_above_usd,
        )

    def text(self) -> str:
        lines = []
        for name, window in (("last 24 hours", self.last_24h), ("last 30 days", self.last_30d)):
            models = ", ".join(f"{model} {usd(amount)}" for model, amount in window.by_model.items()) or "nothing"
            lines.append(f"Spent in the {name}: {usd(window.total_usd)} ({models}).")
        limits = [
            f"daily budget {usd(self.daily_budget_usd)} ({usd(self.remaining_usd)} left)"
            if self.daily_budget_usd is not None
            else "no daily budget",
            f"per-call cap {usd(self.max_cost_per_call_usd)}"
            if self.max_cost_per_call_usd is not None
            else "no per-call cap",
            f"confirmation above {usd(self.confirm_above_usd)}"
            if self.confirm_above_usd is not None
            else "no confirmation",
        ]
        lines.append("Limits: " + "; ".join(limits) + ".")
        return "\n".join(lines)
