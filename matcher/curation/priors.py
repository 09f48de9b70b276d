"""The base rate behind each command's P(same whale), and the words that say which one and why.

A calibration gives P(same whale) at even odds: the evidence of the pair alone, as if same-whale and
different-whale pairs were equally common (:mod:`.calibration`). That is an honest reading only where
the question has no better base rate. A search has one: the new photo shows (at most) one of the K
whales it is compared with, so a candidate is the right whale with prior odds of 1 to K - 1, and at even
odds every wrong whale with a chance match along the body's outline would read "probably same whale".
The audit and a batch of pairs have no such base rate: their pairs were picked for checking, and the
share of mislabels among them is what is being looked for, so they keep even odds and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..io.catalogue import Photo

AUDIT_WHY = ("the audit's pairs were picked for checking, and how often labels are wrong is what it looks for, "
             "so P weighs the evidence of each pair alone")
PAIRS_WHY = "the pairs were chosen by you and their base rate is unknown, so P weighs the evidence of each pair alone"
ONE_PAIR_WHY = "one pair has no base rate, so P weighs its evidence alone"


@dataclass(frozen=True)
class Prior:
    value: float | None  # share of same-whale pairs to assume; None: the calibration's own (even odds)
    why: str  # why this base rate (one clause)

    def line(self, calibrated: bool) -> str:
        """One line for a page's summary and a command's output: which prior P(same whale) assumes, and why."""
        if not calibrated:
            return "no calibration: no P(same whale); verdicts and rankings use the raw score"
        if self.value is None:
            return f"P(same whale) at even odds (the calibration's; --prior sets another base rate): {self.why}"
        return f"P(same whale) at prior {self.value:.3g} (1 in {1 / self.value:,.0f}): {self.why}"


def given(value: float) -> Prior:
    return Prior(value, "as given by --prior")


def for_pairs(override: float | None, why_even: str) -> Prior:
    """The prior of the audit and of verify: even odds (``why_even`` says why) unless ``--prior`` gives one."""
    return given(override) if override is not None else Prior(None, why_even)


def for_search(override: float | None, candidates: list[Photo]) -> Prior:
    """The base rate of a search's own question: the new photo is one of the K whales compared (K: the distinct
    whale ids of the candidates, each unlabelled image counting as a whale of its own), so each candidate is
    its whale with prior 1/K; ``--prior`` overrides; with fewer than two whales, even odds."""
    if override is not None:
        return given(override)
    whales = {p.whale_id for p in candidates if p.whale_id}
    unlabelled = sum(1 for p in candidates if not p.whale_id)
    k = len(whales) + unlabelled
    if k < 2:
        return Prior(None, "only one whale is compared, so the search's question gives no base rate")
    if not unlabelled:
        what = f"{k} whales compared"
    elif not whales:
        what = f"{k} catalogue images compared (no whale ids: each counts as a whale)"
    else:
        what = f"{len(whales)} whales and {unlabelled} unlabelled images compared"
    return Prior(1.0 / k, f"the new photo is assumed to show one of the {what}, so each candidate is its whale "
                          f"with odds of 1 to {k - 1} before the evidence (--prior to change; a photo of a whale "
                          f"new to the catalogue makes it lower still)")
