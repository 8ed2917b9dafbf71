"""Experiments: the report — exposures joined to events by rec_id, per-arm metrics sliced cold vs warm with user-level
95 % intervals, differences from the control, the sample-ratio-mismatch check, interleaving credit and a chart.
The API and the offline replay feed it the same records, so both produce the same report."""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from thaw.experiments import interleaving, stats
from thaw.experiments.spec import Arm, ExperimentSpec

CONVERSION_KINDS = frozenset({"conversion", "purchase"})
COUNTS = (
    "impressions",
    "impressions_cold",
    "impressions_warm",
    "clicks",
    "clicks_cold",
    "clicks_warm",
    "conversions",
    "conversions_cold",
    "conversions_warm",
)
RATIO_METRICS = {  # metric: (numerator, denominator), both summed per user
    "ctr": ("clicks", "impressions"),
    "ctr_cold": ("clicks_cold", "impressions_cold"),
    "ctr_warm": ("clicks_warm", "impressions_warm"),
    "conversion": ("conversions", "impressions"),
    "conversion_cold": ("conversions_cold", "impressions_cold"),
    "conversion_warm": ("conversions_warm", "impressions_warm"),
    "cold_share_shown": ("impressions_cold", "impressions"),
    "cold_share_clicked": ("clicks_cold", "clicks"),
}
COVERAGE_METRICS = ("coverage", "coverage_cold", "coverage_warm")
DEFINITIONS = {
    "impression": "one item shown at one position of one served list (an exposure, identified by its rec_id)",
    "cold / warm": "an item is cold in an impression when it had no interactions at the moment it was shown",
    "click": "an impression whose item got an event with the exposure's rec_id from the same user (any type); "
    "events with an unknown rec_id, another user or an item not in that list are stored but not counted",
    "conversion": f"an impression whose item got such an event of type {sorted(CONVERSION_KINDS)}",
    "ctr, conversion": "clicks (conversions) per impression, in all / cold / warm impressions",
    "cold_share_shown": "cold impressions / impressions; cold_share_clicked: cold clicks / clicks",
    "coverage": "distinct items shown / catalogue items (cold: shown while cold / items cold at some time during "
    "the experiment; warm likewise)",
    "new_items": "items cold when the arm first showed them; hours from max(experiment start, item creation) to "
    "the arm's first click on them (median over those clicked; the others are censored)",
    "intervals": "95 %, delta method over users (the unit of randomisation), normal approximation (an arm's "
    "interval clipped to [0, 1]); p-values two-sided; coverage and new-item figures are catalogue-level and have no "
    "interval",
    "events_not_joined": "events carrying one of the experiment's rec_ids that joined no impression (another user, "
    "or an item not in that list); events with unknown rec_ids are stored but belong to no experiment",
    "srm": "chi-square of users per arm against the configured shares; mismatch when p < threshold",
    "interleaving": "per impression with a click, the team whose drafted positions got more clicks wins; "
    "delta = (wins - losses) / impressions with clicks; p from the two-sided sign test",
}


@dataclass
class Shown:
    """One impression: the item, whether it was cold when shown, its age in seconds (None: unknown) and, in an
    interleaving experiment, the arm (team) that drafted this position."""

    item_id: str
    cold: bool
    age_s: float | None = None
    team: str | None = None


@dataclass
class ExposureLog:
    rec_id: str
    arm: str | None  # None in an interleaving experiment (both arms are in every list)
    user_id: str
    at: float  # seconds since the epoch
    items: list[Shown]


@dataclass
class EventLog:
    rec_id: str
    user_id: str
    item_id: str
    kind: str
    at: float


@dataclass
class Catalogue:
    """Catalogue sizes for coverage: all items; items cold at some time during the experiment; items warm at some
    time during it (an item that warmed up counts in both)."""

    items: int
    cold: int
    warm: int


Clicks = dict[str, dict[int, tuple[float, bool]]]  # rec_id -> position -> (first click time, converted)


def join(exposures: Sequence[ExposureLog], events: Sequence[EventLog]) -> tuple[Clicks, int]:
    """The clicked impressions of each exposure, and how many events joined one (same rec_id, same user, an item
    of that list)."""
    by_rec = {e.rec_id: e for e in exposures}
    clicks: Clicks = defaultdict(dict)
    joined = 0
    for ev in events:
        exp = by_rec.get(ev.rec_id)
        if exp is None or exp.user_id != ev.user_id:
            continue
        pos = next((p for p, s in enumerate(exp.items) if s.item_id == ev.item_id), None)
        if pos is None:
            continue
        joined += 1
        at, conv = clicks[ev.rec_id].get(pos, (math.inf, False))
        clicks[ev.rec_id][pos] = (min(at, ev.at), conv or ev.kind in CONVERSION_KINDS)
    return dict(clicks), joined


def _round(x: float | None, digits: int = 6) -> float | None:
    """`digits` significant digits (a p-value of 1e-12 stays 1e-12); None for missing or NaN."""
    return None if x is None or math.isnan(x) else float(f"{float(x):.{digits}g}")


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _round(v) if isinstance(v, float) else v for k, v in d.items()}


@dataclass
class Tally:
    """What a report is made of, per arm: each user's row of COUNTS, the exposures, the distinct items shown (all,
    cold, warm), the new items (cold when the arm first showed them) and the hours from each one's arrival to the arm's
    first click on it (the clicked ones); for interleaving, the outcome of each list with a click (all clicks, cold
    clicks); the events carrying the experiment's rec_ids, and how many of them joined an impression.
    `tally` makes it from records in memory (the offline replay); services.experiments aggregates it in SQL."""

    per_user: dict[str, dict[str, np.ndarray]]
    exposures: dict[str, int]
    shown: dict[str, dict[str, int]]
    new_items: dict[str, int]
    hours_to_click: dict[str, list[float]]
    outcomes_all: list[int]
    outcomes_cold: list[int]
    events: int
    joined: int


IX = {name: i for i, name in enumerate(COUNTS)}


def new_item_hours(start: float, first_shown: float, age_s: float | None, first_seen: float, click: float) -> float:
    """Hours from a new item's arrival — max(experiment start, its creation), or when any arm first showed it when
    its age is unknown — to an arm's first click on it."""
    origin = max(start, first_shown - age_s) if age_s is not None else first_seen
    return max(0.0, click - origin) / 3600.0


def tally(spec: ExperimentSpec, exposures: Sequence[ExposureLog], events: Sequence[EventLog], start: float) -> Tally:
    clicked, joined = join(exposures, events)
    names = spec.names
    per_user: dict[str, dict[str, np.ndarray]] = {a: defaultdict(lambda: np.zeros(len(COUNTS))) for a in names}
    exposures_n = dict.fromkeys(names, 0)
    shown: dict[str, dict[str, set[str]]] = {a: {"all": set(), "cold": set(), "warm": set()} for a in names}
    first_shown: dict[str, dict[str, tuple[float, bool, float | None]]] = {a: {} for a in names}
    first_seen: dict[str, float] = {}
    first_click: dict[str, dict[str, float]] = {a: {} for a in names}
    outcomes_all: list[int] = []
    outcomes_cold: list[int] = []
    for exp in sorted(exposures, key=lambda e: e.at):
        clicks = clicked.get(exp.rec_id, {})
        teams = {s.team or exp.arm for s in exp.items} if spec.kind == "interleaving" else {exp.arm}
        for team in teams:
            if team in exposures_n:
                exposures_n[team] += 1
                per_user[team][exp.user_id] += 0  # a served user counts even if their list was empty
        for pos, s in enumerate(exp.items):
            credited = s.team if spec.kind == "interleaving" else exp.arm
            if credited not in per_user:
                continue
            slice_ = "cold" if s.cold else "warm"
            row = per_user[credited][exp.user_id]
            row[IX["impressions"]] += 1
            row[IX[f"impressions_{slice_}"]] += 1
            hit = clicks.get(pos)
            if hit is not None:
                row[IX["clicks"]] += 1
                row[IX[f"clicks_{slice_}"]] += 1
                if hit[1]:
                    row[IX["conversions"]] += 1
                    row[IX[f"conversions_{slice_}"]] += 1
                first_click[credited][s.item_id] = min(first_click[credited].get(s.item_id, math.inf), hit[0])
            shown[credited]["all"].add(s.item_id)
            shown[credited][slice_].add(s.item_id)
            first_shown[credited].setdefault(s.item_id, (exp.at, s.cold, s.age_s))
            first_seen.setdefault(s.item_id, exp.at)
        if spec.kind == "interleaving" and clicks:
            owner = [s.team or "" for s in exp.items]
            flags = [p in clicks for p in range(len(exp.items))]
            treatment, control = spec.treatments[0], spec.control
            outcomes_all.append(interleaving.outcome(owner, flags, treatment, control))
            cold_flags = [f and s.cold for f, s in zip(flags, exp.items, strict=True)]
            if any(cold_flags):
                outcomes_cold.append(interleaving.outcome(owner, cold_flags, treatment, control))
    return Tally(
        {a: dict(rows) for a, rows in per_user.items()},
        exposures_n,
        {a: {k: len(v) for k, v in sets.items()} for a, sets in shown.items()},
        {a: sum(1 for _, cold, _ in first_shown[a].values() if cold) for a in names},
        {
            a: [
                new_item_hours(start, at, age, first_seen[item], first_click[a][item])
                for item, (at, cold, age) in first_shown[a].items()
                if cold and item in first_click[a]
            ]
            for a in names
        },
        outcomes_all,
        outcomes_cold,
        len(events),
        joined,
    )


def _arm(arm: Arm, t: Tally, mat: np.ndarray, catalogue: Catalogue, level: float) -> dict[str, Any]:
    """One arm's counts, metrics with intervals, coverage and new items' time to a first click."""
    metrics: dict[str, Any] = {
        m: _rounded(stats.ratio(mat[:, IX[num]], mat[:, IX[den]], level, (0.0, 1.0)).as_dict())
        for m, (num, den) in RATIO_METRICS.items()
    }
    sizes = {"coverage": catalogue.items, "coverage_cold": catalogue.cold, "coverage_warm": catalogue.warm}
    for m, key in zip(COVERAGE_METRICS, ("all", "cold", "warm"), strict=True):
        value = t.shown[arm.name][key] / sizes[m] if sizes[m] else None
        metrics[m] = {"value": _round(value), "ci_low": None, "ci_high": None, "units": sizes[m]}
    new, hours = t.new_items[arm.name], t.hours_to_click[arm.name]
    return {
        **arm.as_dict(),
        "users": len(t.per_user[arm.name]),
        "exposures": t.exposures[arm.name],
        "counts": {c: int(mat[:, i].sum()) for i, c in enumerate(COUNTS)},
        "metrics": metrics,
        "new_items": {
            "items": new,
            "with_first_click": len(hours),
            "share_clicked": _round(len(hours) / new) if new else None,
            "median_hours_to_first_click": _round(float(np.median(hours)), 4) if hours else None,
        },
    }


def _vs_control(
    spec: ExperimentSpec, matrices: dict[str, np.ndarray], arms: dict[str, Any], level: float
) -> dict[str, Any]:
    """Each treatment minus the control, per metric, with its interval and p-value (coverage: the difference)."""
    c = matrices[spec.control]
    out = {}
    for name in spec.treatments:
        t = matrices[name]
        diffs = {
            m: _rounded(stats.ratio_difference(t[:, IX[n]], t[:, IX[d]], c[:, IX[n]], c[:, IX[d]], level).as_dict())
            for m, (n, d) in RATIO_METRICS.items()
        }
        for m in COVERAGE_METRICS:
            tv, cv = arms[name]["metrics"][m]["value"], arms[spec.control]["metrics"][m]["value"]
            diff = None if tv is None or cv is None else tv - cv
            diffs[m] = {"diff": _round(diff), "ci_low": None, "ci_high": None, "p_value": None, "relative": None}
        out[name] = diffs
    return out


def build_report(
    spec: ExperimentSpec,
    exposures: Sequence[ExposureLog],
    events: Sequence[EventLog],
    catalogue: Catalogue,
    *,
    start: float,
    level: float = 0.95,
) -> dict[str, Any]:
    """The report of an experiment from its exposures and events (see DEFINITIONS)."""
    return report_of(spec, tally(spec, exposures, events, start), catalogue, level)


def report_of(spec: ExperimentSpec, t: Tally, catalogue: Catalogue, level: float = 0.95) -> dict[str, Any]:
    """The report of an experiment from its tally (see DEFINITIONS)."""
    matrices = {
        a.name: np.stack(list(t.per_user[a.name].values())) if t.per_user[a.name] else np.zeros((0, len(COUNTS)))
        for a in spec.arms
    }
    arms = {a.name: _arm(a, t, matrices[a.name], catalogue, level) for a in spec.arms}
    report: dict[str, Any] = {
        "experiment": spec.as_dict(),
        "catalogue": {"items": catalogue.items, "cold": catalogue.cold, "warm": catalogue.warm},
        "events_joined": t.joined,
        "events_not_joined": t.events - t.joined,
        "arms": arms,
        "vs_control": {},
        "srm": None,
        "interleaving": None,
        "definitions": DEFINITIONS,
    }
    if spec.kind == "ab":
        report["vs_control"] = _vs_control(spec, matrices, arms, level)
        users = [arms[a.name]["users"] for a in spec.arms]
        report["srm"] = {
            "observed_users": {a.name: arms[a.name]["users"] for a in spec.arms},
            "expected_shares": {a.name: a.share for a in spec.arms},
            **_rounded(stats.srm(users, [a.share for a in spec.arms])),
        }
    else:
        report["interleaving"] = {
            "treatment": spec.treatments[0],
            "control": spec.control,
            "all_clicks": _rounded(interleaving.summarise(t.outcomes_all, level)),
            "cold_clicks": _rounded(interleaving.summarise(t.outcomes_cold, level)),
        }
    return report


TABLE_METRICS = (
    "ctr",
    "ctr_cold",
    "ctr_warm",
    "conversion",
    "conversion_cold",
    "conversion_warm",
    "cold_share_shown",
    "cold_share_clicked",
    "coverage",
    "coverage_cold",
)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def summary_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The per-arm table for the CLI, one row per figure (counts, each metric with its 95 % interval, new items)
    and one column per arm."""
    arms = report["arms"]
    control = report["experiment"]["control"]
    header = ["", *(f"{a} (control)" if a == control else a for a in arms)]
    rows = [["policy", *(arms[a]["policy"] for a in arms)]]
    rows += [[key, *(str(arms[a][key]) for a in arms)] for key in ("users", "exposures")]
    rows += [[key, *(str(arms[a]["counts"][key]) for a in arms)] for key in ("impressions", "clicks", "conversions")]
    for m in TABLE_METRICS:
        cells = []
        for a in arms:
            v = arms[a]["metrics"][m]
            ci = f" ({_pct(v['ci_low'])}–{_pct(v['ci_high'])})" if v["ci_low"] is not None else ""
            cells.append(_pct(v["value"]) + ci)
        rows.append([m, *cells])
    rows.append(
        [
            "new items clicked",
            *(f"{arms[a]['new_items']['with_first_click']}/{arms[a]['new_items']['items']}" for a in arms),
        ]
    )
    rows.append(
        ["median h to 1st click", *(str(arms[a]["new_items"]["median_hours_to_first_click"] or "—") for a in arms)]
    )
    return header, rows


def difference_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Treatment minus control per metric (percentage points), its 95 % interval and p-value; one column per arm."""
    treatments = list(report["vs_control"])
    if not treatments:
        return [], []
    header = [f"vs {report['experiment']['control']}", *treatments]
    rows = []
    for m in TABLE_METRICS:
        cells = []
        for a in treatments:
            d = report["vs_control"][a][m]
            if d["diff"] is None:
                cells.append("—")
            elif d["ci_low"] is None:
                cells.append(f"{100 * d['diff']:+.2f} pp")
            else:
                ci = f"({100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f})"
                cells.append(f"{100 * d['diff']:+.2f} pp {ci} {_p(d['p_value'])}")
        rows.append([m, *cells])
    return header, rows


def _p(p: float | None) -> str:
    return "p n/a" if p is None else ("p<1e-4" if p < 1e-4 else f"p={p:.2g}")


CHART_METRICS = ("ctr", "ctr_cold", "ctr_warm", "conversion", "cold_share_shown", "coverage")


def chart_png(report: dict[str, Any], title: str = "") -> bytes:
    """A PNG of the per-arm metrics with their 95 % intervals (control in grey, p-value vs control above each bar);
    for interleaving, the wins/losses/ties of the treatment team as well."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in API threads

    names = list(report["arms"])
    control = report["experiment"]["control"]
    inter = report.get("interleaving")
    fig = Figure(figsize=(13, 7.5 if inter is None else 10))
    rows = 2 if inter is None else 3
    axes = fig.subplots(rows, 3).flatten()
    for ax, m in zip(axes, CHART_METRICS, strict=False):
        vals = [report["arms"][a]["metrics"][m] for a in names]
        y = np.array([v["value"] if v["value"] is not None else 0.0 for v in vals])
        colors = ["#9e9e9e" if a == control else "#1f77b4" for a in names]
        ax.bar(range(len(names)), y, color=colors)
        top = float(y.max()) if len(y) else 0.0
        for i, (a, v) in enumerate(zip(names, vals, strict=True)):
            if v["value"] is None:
                ax.annotate("n/a", (i, 0), ha="center", va="bottom", fontsize=8, color="#666666")
                continue
            hi = v["ci_high"] if v["ci_high"] is not None else v["value"]
            if v["ci_low"] is not None:
                ax.errorbar(i, v["value"], yerr=[[v["value"] - v["ci_low"]], [hi - v["value"]]], color="k", capsize=4)
            top = max(top, hi)
            p = report["vs_control"].get(a, {}).get(m, {}).get("p_value")
            if p is not None:
                ax.annotate(_p(p), (i, hi), ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, 1.15 * top if top > 0 else 1.0)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(m, fontsize=10)
    if inter is not None:
        for ax, key in zip(axes[6:8], ("all_clicks", "cold_clicks"), strict=True):
            s = inter[key]
            colors = ["#2ca02c", "#d62728", "#9e9e9e"]
            ax.bar(["wins", "losses", "ties"], [s["wins"], s["losses"], s["ties"]], color=colors)
            ax.set_title(f"{inter['treatment']} vs {inter['control']} ({key}): {_p(s['p_value'])}", fontsize=9)
        axes[8].axis("off")
    srm = report.get("srm")
    srm_text = ""
    if srm:
        srm_text = f"  |  SRM {_p(srm['p_value'])}" + (" MISMATCH" if srm["mismatch"] else "")
    fig.suptitle((title or "experiment") + f" — control: {control}{srm_text}", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
