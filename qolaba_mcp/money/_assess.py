"""A call's spend, assessed once: its quote, and whether it is refused, must be confirmed by the user, or may go."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from .._config import Settings
from ..api._catalog import Catalog
from ._spend import Quote, approval_question, cannot_ask, check_caps, not_confirmed, quote


@dataclass(frozen=True, kw_only=True)
class Go:
    """The call may be made at this quote."""

    quote: Quote


@dataclass(frozen=True, kw_only=True)
class Refused:
    """The call must not be made; ``text`` says why and what to do, for the caller."""

    quote: Quote
    text: str


@dataclass(frozen=True, kw_only=True)
class Confirm:
    """The user must approve the call first; ``question`` is what they are asked."""

    quote: Quote
    question: str


Assessment = Go | Refused | Confirm


async def assess(
    catalog: Catalog,
    settings: Settings,
    *,
    model: str,
    quality: str | None,
    num_images: int | None,
    max_cost_usd: float | None,
    can_ask: bool,
    spent_24h: Callable[[], Awaitable[float | None]],
) -> Assessment:
    """The call's quote and what the limits say of it: a cap refuses it; above QOLABA_CONFIRM_ABOVE_USD the user
    is asked (``spent_24h`` is read only then, for the question); a client that cannot ask goes on only with a
    max_cost_usd that covers the estimate. The daily budget is held later, atomically, by the ledger."""
    priced = quote(catalog, model=model, quality=quality, num_images=num_images)
    if (problem := check_caps(settings, priced, max_cost_usd=max_cost_usd)) is not None:
        return Refused(quote=priced, text=problem)  # never put to the user: refused whatever they would say
    threshold, estimate = settings.confirm_above_usd, priced.estimate_usd
    if threshold is None or (estimate is not None and estimate <= threshold):
        return Go(quote=priced)
    if not can_ask:
        if max_cost_usd is not None and estimate is not None and max_cost_usd >= estimate:
            return Go(quote=priced)  # the caller vouches for a price the user agreed to
        return Refused(quote=priced, text=cannot_ask(priced, threshold))
    question = approval_question(priced, spent_24h=await spent_24h(), budget=settings.daily_budget_usd)
    return Confirm(quote=priced, question=question)


def answered(assessment: Assessment, *, action: Literal["accept", "decline", "cancel"], approve: bool) -> Go | Refused:
    """The assessment once the user answered (a Go or a Refused stands as it is): only an explicit approve spends."""
    if not isinstance(assessment, Confirm):
        return assessment
    if action == "accept" and approve:
        return Go(quote=assessment.quote)
    refusal = "decline" if action == "accept" else action  # an accepted form without approve: true declines
    return Refused(quote=assessment.quote, text=not_confirmed(assessment.quote, refusal))
