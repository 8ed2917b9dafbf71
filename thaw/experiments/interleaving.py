"""Experiments: team-draft interleaving (Radlinski, Kurup, Joachims 2008) — two policies' rankings merged into one
list, each position credited to the team that drafted it, and per-impression wins tested with a sign test.

Every user sees both policies at once, so user-to-user variance cancels: interleaving needs far less traffic than
an A/B split to find the same preference (Chapelle, Joachims, Radlinski, Yue 2012).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from thaw.experiments.stats import ratio, sign_test


def team_draft(
    a: Sequence[str], b: Sequence[str], k: int, rng: random.Random, teams: tuple[str, str] = ("A", "B")
) -> tuple[list[str], list[str]]:
    """Interleave rankings `a` and `b` into at most k items. In each round the team with fewer picks drafts next
    (a coin decides a tie) and takes its highest-ranked item not yet in the list; a team with nothing left passes.
    Returns the items and, for each position, the team that drafted it."""
    items: list[str] = []
    owner: list[str] = []
    taken: set[str] = set()
    pos = [0, 0]
    picks = [0, 0]
    lists = (a, b)
    while len(items) < k:
        for j in (0, 1):
            while pos[j] < len(lists[j]) and lists[j][pos[j]] in taken:
                pos[j] += 1
        left = [pos[0] < len(a), pos[1] < len(b)]
        if not any(left):
            break
        j = 0 if picks[0] < picks[1] or (picks[0] == picks[1] and rng.random() < 0.5) else 1
        if not left[j]:
            j = 1 - j
        item = lists[j][pos[j]]
        items.append(item)
        owner.append(teams[j])
        taken.add(item)
        picks[j] += 1
    return items, owner


def outcome(owner: Sequence[str], clicked: Sequence[bool], team_a: str, team_b: str) -> int:
    """+1 when team A's positions got more clicks in this impression, -1 when B's did, 0 for a tie."""
    if len(owner) != len(clicked):
        raise ValueError(f"{len(owner)} team labels but {len(clicked)} click flags")
    ca = sum(1 for t, c in zip(owner, clicked, strict=True) if c and t == team_a)
    cb = sum(1 for t, c in zip(owner, clicked, strict=True) if c and t == team_b)
    return preference(ca, cb)


def preference(clicks_a: int, clicks_b: int) -> int:
    """An impression's outcome from each team's clicks in it: +1 for A, -1 for B, 0 for a tie."""
    return (clicks_a > clicks_b) - (clicks_a < clicks_b)


def summarise(outcomes: Sequence[int], level: float = 0.95) -> dict[str, Any]:
    """Wins, losses and ties of team A over the impressions that had a click, Delta_AB = (wins - losses) / n with
    its interval, and the sign-test p-value. `outcomes` holds one entry per impression with at least one click."""
    wins = sum(1 for o in outcomes if o > 0)
    losses = sum(1 for o in outcomes if o < 0)
    ties = len(outcomes) - wins - losses
    est = ratio(np.asarray(outcomes, float), np.ones(len(outcomes)), level)
    return {
        "impressions_with_clicks": len(outcomes),
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "delta": est.value,
        "ci_low": est.ci_low,
        "ci_high": est.ci_high,
        "p_value": sign_test(wins, losses),
    }
