"""Encoders: training — ALS on warm interactions, then heads (and the audio CNN) regressed onto the CF space,
early-stopped and the blend weight alpha tuned on cold validation items."""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from api.blend import profile, score_items
from encoders.artifacts import ItemInput, ThawModel, features
from encoders.fusion import MODALITY_ORDER, Head, ThawNet
from thaw.datasets import Dataset, Interactions, Split
from thaw.evaluation import evaluate_rankings, rank_by_scores, user_positives
from thaw.factors import fit_als
from workers.media import MediaError, decode_audio, decode_image

log = logging.getLogger(__name__)
LOSSES = ("mse", "wpe", "softmax")


@dataclass
class TrainConfig:
    factors: int = 32
    als_reg: float = 0.05
    als_iterations: int = 15
    als_alpha: float = 10.0
    epochs: int = 40
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    loss: str = "wpe"
    modality_dropout: float = 0.3
    hidden: int = 256
    eval_every: int = 5
    cf_shrinkage: float = 10.0
    ridge_init: bool = True
    seed: int = 0


def item_inputs(ds: Dataset, item_ids: list[str]) -> list[ItemInput]:
    """Decode a dataset's items into encoder input; unreadable media are skipped with a warning."""
    from encoders.audio import SAMPLE_RATE

    out = []
    for item_id in item_ids:
        item = ds.items[item_id]
        image = audio = None
        try:
            image = decode_image(item.image.read_bytes()) if item.image else None
        except MediaError as exc:
            log.warning("item %s: image skipped: %s", item_id, exc)
        try:
            audio = decode_audio(item.audio.read_bytes(), sample_rate=SAMPLE_RATE) if item.audio else None
        except MediaError as exc:
            log.warning("item %s: audio skipped: %s", item_id, exc)
        out.append(ItemInput(item_id, text=item.text or None, image=image, audio=audio))
    return out


@dataclass
class Table:
    """Cached content features of a set of items (frozen backbones run once)."""

    ids: list[str]
    feats: dict[str, torch.Tensor]
    masks: torch.Tensor
    mels: list[torch.Tensor]

    def subset(self, ids: list[str]) -> Table:
        pos = {item: i for i, item in enumerate(self.ids)}
        idx = [pos[i] for i in ids]
        return Table(
            list(ids), {k: v[idx] for k, v in self.feats.items()}, self.masks[idx], [self.mels[i] for i in idx]
        )

    def batch(self, idx: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        mels = [self.mels[i] for i in idx]
        owner = torch.tensor([j for j, m in enumerate(mels) for _ in range(len(m))], dtype=torch.long)
        mel = torch.cat([m for m in mels if len(m)]) if len(owner) else torch.zeros(0, 64, 188)
        return {k: v[idx] for k, v in self.feats.items()}, mel, owner, self.masks[idx]


def content_table(inputs: list[ItemInput], batch_size: int = 64, progress: bool = False) -> Table:
    parts = []
    for start in tqdm(range(0, len(inputs), batch_size), desc="content features", disable=not progress):
        chunk = inputs[start : start + batch_size]
        feats, mel, owner, masks = features(chunk)
        per_item = [mel[owner == j] for j in range(len(chunk))]
        parts.append((feats, masks, per_item))
    return Table(
        [it.item_id for it in inputs],
        {k: torch.cat([p[0][k] for p in parts]) for k in ("text", "image")},
        torch.cat([p[1] for p in parts]),
        [m for p in parts for m in p[2]],
    )


def predict(net: ThawNet, table: Table, masks: torch.Tensor | None = None) -> np.ndarray:
    net.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(table.ids), 256):
            idx = list(range(start, min(start + 256, len(table.ids))))
            feats, mel, owner, m = table.batch(idx)
            feats["audio"] = net.audio_embedding(mel, owner, len(idx))
            out.append(net(feats, m if masks is None else masks[idx])[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, int(net.config["dim"])), np.float32)


def rank_cold(
    user_ids: list[str],
    user_factors: np.ndarray,
    cold_ids: list[str],
    cold_pred: np.ndarray,
    positives: dict[str, set[str]],
    *,
    alpha: float = 1.0,
    profiles: dict[str, np.ndarray] | None = None,
) -> dict[str, list[str]]:
    """Every user with cold positives ranks all cold items by the blended score (alpha=1: CF score only)."""
    uix = {u: i for i, u in enumerate(user_ids)}
    out = {}
    for user in positives:
        if user not in uix:
            continue
        prof = (profiles or {}).get(user)
        scores = score_items(user_factors[uix[user]], cold_pred, cold_pred if prof is not None else None, prof, alpha)
        out[user] = rank_by_scores(scores, cold_ids)
    return out


def history_profiles(ds: Dataset, warm_ids: list[str], warm_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Each user's content profile: the centroid of the predicted vectors of their warm items."""
    index = {item: i for i, item in enumerate(warm_ids)}
    rows: dict[str, list[np.ndarray]] = {}
    for user, item in zip(ds.interactions.user_ids.tolist(), ds.interactions.item_ids.tolist(), strict=True):
        if item in index:
            rows.setdefault(user, []).append(warm_pred[index[item]])
    return {u: p for u, vs in rows.items() if (p := profile(vs)) is not None}


def tune_fusion(net: ThawNet, val_ndcg: Callable[[ThawNet], float], present: list[bool]) -> float:
    """Fusion weights chosen on cold validation from a small grid (never zero, so an item with one modality
    still gets that modality's prediction); returns the best validation NDCG@20."""
    levels = (0.1, 0.3, 1.0, 3.0)
    grids = [levels if have else (1.0,) for have in present]
    best, best_w = -1.0, net.weights.detach().clone()
    for combo in itertools.product(*grids):
        with torch.no_grad():
            net.weights.copy_(torch.log(torch.tensor(combo)))
        score = val_ndcg(net)
        if score > best:
            best, best_w = score, net.weights.detach().clone()
    with torch.no_grad():
        net.weights.copy_(best_w)
    return best


RIDGE_LAMBDAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def ridge_map(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge regression with an unpenalised bias: returns W (d_out, d_in) and b (d_out,) minimising
    |x W^T + b - y|^2 + lam |W|^2."""
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = (x - xm).double(), (y - ym).double()
    w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(x.shape[1], dtype=torch.float64), xc.T @ yc).T.float()
    return w, ym - w @ xm


def init_ridge(
    net: ThawNet, warm: Table, targets: torch.Tensor, val_ndcg: Callable[[ThawNet, int], float]
) -> dict[str, float]:
    """Start each frozen-feature head (text, image) at the ridge map from its features onto the warm items' factors,
    lambda chosen per modality on cold validation; the residual MLPs start at zero. Returns the chosen lambdas."""
    chosen: dict[str, float] = {}
    for j, modality in enumerate(MODALITY_ORDER):
        have = warm.masks[:, j]
        if modality not in warm.feats or int(have.sum()) < 2:
            continue
        head = net.heads[modality]
        assert isinstance(head, Head)
        scores = {}
        for lam in RIDGE_LAMBDAS:
            head.set_linear(*ridge_map(warm.feats[modality][have], targets[have], lam))
            scores[lam] = val_ndcg(net, j)
        chosen[modality] = max(scores, key=lambda lam: scores[lam])
        head.set_linear(*ridge_map(warm.feats[modality][have], targets[have], chosen[modality]))
    return chosen


def _loss(
    kind: str, pred: torch.Tensor, target: torch.Tensor, users: torch.Tensor, prefs: torch.Tensor, alpha: float
) -> torch.Tensor:
    if kind == "mse":  # van den Oord et al.: regress onto the item factors
        return ((pred - target) ** 2).sum(-1).mean()
    scores = pred @ users.T
    if kind == "wpe":  # weighted prediction error on user-item preferences
        return ((1 + alpha * prefs) * (prefs - scores) ** 2).mean()
    dist = prefs / prefs.sum(-1, keepdim=True).clamp_min(1e-8)  # softmax over users against their factors
    return -(dist * torch.log_softmax(scores, dim=-1)).sum(-1).mean()


def training_events(ds: Dataset, split: Split) -> Interactions:
    """The only interactions training reads: those of warm items (never cold validation or cold test items)."""
    leaked = set(split.warm) & (set(split.cold_val) | set(split.cold_test))
    if leaked:
        raise ValueError(f"split puts {sorted(leaked)[:5]} in both warm and cold")
    return ds.interactions.for_items(split.warm)


def train(
    ds: Dataset, split: Split, config: TrainConfig, *, progress: bool = True, features: Table | None = None
) -> ThawModel:
    """Train a model version. Only warm items' interactions reach ALS and the heads; cold validation items are
    used for early stopping and to tune alpha; cold test items are never read. `features` may hold the content
    features of the catalogue already (evaluation reuses them across seeds and methods)."""
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    warm_events = training_events(ds, split)
    factors = fit_als(
        warm_events,
        factors=config.factors,
        regularization=config.als_reg,
        iterations=config.als_iterations,
        alpha=config.als_alpha,
        seed=config.seed,
    )
    timings["als_s"] = time.perf_counter() - t

    t = time.perf_counter()
    val_ids = [i for i in split.cold_val if ds.items[i].modalities]
    if features is None:
        warm = content_table(item_inputs(ds, factors.item_ids), progress=progress)
        val = content_table(item_inputs(ds, val_ids), progress=progress)
    else:
        warm, val = features.subset(factors.item_ids), features.subset(val_ids)
    timings["features_s"] = time.perf_counter() - t

    uix = {u: i for i, u in enumerate(factors.user_ids)}
    iix = {it: i for i, it in enumerate(factors.item_ids)}
    prefs = torch.zeros(len(factors.item_ids), len(factors.user_ids))
    for u, i in zip(warm_events.user_ids.tolist(), warm_events.item_ids.tolist(), strict=True):
        prefs[iix[i], uix[u]] = 1.0
    users = torch.from_numpy(factors.users)
    targets = torch.from_numpy(factors.items)
    val_pos = {u: p for u, p in user_positives(ds.interactions, val_ids).items() if u in uix}

    def val_ndcg(net: ThawNet, alpha: float = 1.0, profiles: dict[str, np.ndarray] | None = None) -> float:
        ranks = rank_cold(
            factors.user_ids, factors.users, val_ids, predict(net, val), val_pos, alpha=alpha, profiles=profiles
        )
        return evaluate_rankings(ranks, val_pos, n_items=len(val_ids), ks=(20,))["ndcg@20"] if val_pos else 0.0

    def val_ndcg_alone(net: ThawNet, j: int) -> float:
        """Cold-validation NDCG@20 of one modality's head on the validation items that have it."""
        have = val.masks[:, j]
        ids = [i for i, h in zip(val.ids, have.tolist(), strict=True) if h]
        pos = {u: p & set(ids) for u, p in val_pos.items() if p & set(ids)}
        only = torch.zeros_like(val.masks)
        only[:, j] = have
        pred = predict(net, val, only)[have.numpy()]
        ranks = rank_cold(factors.user_ids, factors.users, ids, pred, pos)
        return evaluate_rankings(ranks, pos, n_items=len(ids), ks=(20,))["ndcg@20"] if pos else 0.0

    net = ThawNet(dim=config.factors, hidden=config.hidden)
    t = time.perf_counter()
    ridge_lambdas = init_ridge(net, warm, targets, val_ndcg_alone) if config.ridge_init else {}
    timings["ridge_s"] = time.perf_counter() - t
    for modality in ridge_lambdas:  # the ridge maps stay fixed; the residual MLPs learn what they miss
        net.heads[modality].linear.requires_grad_(False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    best = val_ndcg(net)
    best_state, history = copy.deepcopy(net.state_dict()), [{"epoch": 0, "cold_val_ndcg@20": round(best, 4)}]
    t = time.perf_counter()
    for epoch in tqdm(range(1, config.epochs + 1), desc="train encoders", disable=not progress):
        net.train()
        order = rng.permutation(len(warm.ids)).tolist()
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            feats, mel, owner, masks = warm.batch(idx)
            keep = masks & (torch.rand(masks.shape) > config.modality_dropout)
            keep[~keep.any(1)] = masks[~keep.any(1)]
            feats["audio"] = net.audio_embedding(mel, owner, len(idx))
            fused, preds = net(feats, keep)
            loss = _loss(config.loss, fused, targets[idx], users, prefs[idx], config.als_alpha)
            for j in range(3):  # every head must work alone too
                have = masks[:, j]
                if have.any():
                    loss = loss + 0.3 * _loss(
                        config.loss, preds[have, j], targets[idx][have], users, prefs[idx][have], config.als_alpha
                    )
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            score = val_ndcg(net)
            history.append({"epoch": epoch, "cold_val_ndcg@20": round(score, 4)})
            if score > best:
                best, best_state = score, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    timings["heads_s"] = time.perf_counter() - t
    fusion = tune_fusion(net, val_ndcg, warm.masks.any(0).tolist())

    profiles = history_profiles(ds, factors.item_ids, predict(net, warm))
    alphas = {a: val_ndcg(net, a, profiles) for a in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)}
    alpha = max(alphas, key=lambda a: (alphas[a], a))
    cfg: dict[str, Any] = dict(
        asdict(config),
        alpha=alpha,
        als_reg=config.als_reg,
        cf_shrinkage=config.cf_shrinkage,
        train_items=list(warm.ids),  # the heads' training set: warm items only (checked by the leakage test)
        train_users=len(factors.user_ids),
    )
    metrics = {
        "cold_val_ndcg@20": round(max(best, fusion), 4),
        "alpha_grid": {str(a): round(v, 4) for a, v in alphas.items()},
        "history": history,
        "ridge_lambdas": ridge_lambdas,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "n_val_users": len(val_pos),
    }
    log.info("trained: cold-val NDCG@20 %.4f, alpha %.2f", best, alpha)
    model = ThawModel(
        net,
        version="",
        user_ids=factors.user_ids,
        user_factors=factors.users,
        item_ids=factors.item_ids,
        item_factors=factors.items,
        config=cfg,
        metrics=metrics,
    )
    return model
