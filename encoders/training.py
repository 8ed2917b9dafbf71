"""Encoders: training — ALS on warm interactions (content-regularised where cold validation says it pays), then heads
(and the audio CNN) regressed onto the CF space, early-stopped and the blend weight alpha tuned on cold validation
items."""

from __future__ import annotations

import copy
import functools
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from api.blend import profile, score_items
from encoders.artifacts import ItemInput, ThawModel, features
from encoders.audio import augment
from encoders.fusion import MODALITY_ORDER, Head, ThawNet, head_input
from encoders.tags import TagFactors, TagVocab
from thaw.datasets import Dataset, Interactions, Split
from thaw.evaluation import evaluate_rankings, rank_by_scores, user_positives
from thaw.factors import Factors, content_regularised_als, fit_als
from thaw.profiling import StageMeter
from thaw.schema import item_tags
from workers.media import MediaError, decode_audio, decode_image

log = logging.getLogger(__name__)
LOSSES = ("mse", "wpe", "softmax")
AUDIO = MODALITY_ORDER.index("audio")


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
    tag_min_count: int = 2  # a tag must appear on this many warm items to enter the vocabulary
    # content-regularised ALS: pulls tried (0, plain ALS, is always a candidate) x ridge lambdas of the content map
    content_pulls: tuple[float, ...] = (10.0, 40.0, 80.0)
    content_lambdas: tuple[float, ...] = (3.0, 10.0)
    content_rounds: int = 4
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
        out.append(ItemInput(item_id, text=item.text or None, image=image, audio=audio, tags=item_tags(item.fields)))
    return out


@dataclass
class Table:
    """Cached content features of a set of items (frozen backbones run once); `feats["tags"]` and
    `feats["tag_factors"]` appear once a model's tag vocabulary and tag factors are applied (`with_vocab`,
    `with_tag_factors`)."""

    ids: list[str]
    feats: dict[str, torch.Tensor]
    masks: torch.Tensor
    mels: list[torch.Tensor]
    tags: list[frozenset[str]]

    def subset(self, ids: list[str]) -> Table:
        pos = {item: i for i, item in enumerate(self.ids)}
        idx = [pos[i] for i in ids]
        return Table(
            list(ids),
            {k: v[idx] for k, v in self.feats.items()},
            self.masks[idx],
            [self.mels[i] for i in idx],
            [self.tags[i] for i in idx],
        )

    def with_vocab(self, vocab: TagVocab) -> Table:
        tags = torch.from_numpy(vocab.transform(self.tags))
        return Table(self.ids, dict(self.feats, tags=tags), self.masks, self.mels, self.tags)

    def with_tag_factors(self, factors: TagFactors, own: np.ndarray | None = None) -> Table:
        """`own`: the rows' CF vectors, when `factors` were fitted on these items (leave-one-out)."""
        z = torch.from_numpy(factors.transform(self.tags, own))
        return Table(self.ids, dict(self.feats, tag_factors=z), self.masks, self.mels, self.tags)

    def for_model(self, model: ThawModel) -> Table:
        """The table with everything a trained model's text head reads beside the frozen features."""
        return self.with_vocab(model.vocab).with_tag_factors(model.tag_factors)

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
        [it.tags for it in inputs],
    )


def _chunks(n: int, size: int = 256) -> list[list[int]]:
    return [list(range(start, min(start + size, n))) for start in range(0, n, size)]


@torch.no_grad()
def audio_embeddings(net: ThawNet, table: Table) -> torch.Tensor:
    """(n, audio_dim) CNN embeddings of the table's items (zeros where an item has no audio)."""
    net.eval()
    parts = [net.audio_embedding(*table.batch(idx)[1:3], len(idx)) for idx in _chunks(len(table.ids))]
    return torch.cat(parts) if parts else torch.zeros(0, int(net.config["audio_dim"]))


@torch.no_grad()
def predict(net: ThawNet, table: Table, masks: torch.Tensor | None = None) -> np.ndarray:
    audio = audio_embeddings(net, table)
    out = []
    for idx in _chunks(len(table.ids)):
        feats, _, _, m = table.batch(idx)
        feats["audio"] = audio[idx]
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


def cold_ndcg(
    user_ids: list[str],
    user_factors: np.ndarray,
    cold_ids: list[str],
    cold_pred: np.ndarray,
    positives: dict[str, set[str]],
    *,
    alpha: float = 1.0,
    profiles: dict[str, np.ndarray] | None = None,
) -> float:
    """NDCG@20 of `rank_cold` over the users with positives among `cold_ids` (0 when there are none)."""
    if not positives:
        return 0.0
    ranks = rank_cold(user_ids, user_factors, cold_ids, cold_pred, positives, alpha=alpha, profiles=profiles)
    return evaluate_rankings(ranks, positives, n_items=len(cold_ids), ks=(20,))["ndcg@20"]


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
    n, d = xc.shape
    if d > n:  # the dual form solves an n x n system: X^T (X X^T + lam I)^-1 Y equals (X^T X + lam I)^-1 X^T Y
        w = (xc.T @ torch.linalg.solve(xc @ xc.T + lam * torch.eye(n, dtype=torch.float64), yc)).T.float()
    else:
        w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(d, dtype=torch.float64), xc.T @ yc).T.float()
    return w, ym - w @ xm


def init_ridge(
    net: ThawNet,
    inputs: dict[str, torch.Tensor],
    masks: torch.Tensor,
    targets: torch.Tensor,
    val_ndcg: Callable[[ThawNet, int], float],
    grids: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """Set the linear part of each head in `inputs` (modality -> what the head reads, one row per warm item) to the
    ridge map from those features onto the warm items' factors, lambda chosen per modality on cold validation from
    `grids[modality]` (default RIDGE_LAMBDAS); the residual MLPs restart at zero. Returns the chosen lambdas."""
    chosen: dict[str, float] = {}
    for j, modality in enumerate(MODALITY_ORDER):
        have = masks[:, j]
        if modality not in inputs or int(have.sum()) < 2:
            continue
        head = net.heads[modality]
        assert isinstance(head, Head)
        head.reset_residual()
        scores = {}
        for lam in (grids or {}).get(modality, RIDGE_LAMBDAS):
            head.set_linear(*ridge_map(inputs[modality][have], targets[have], lam))
            scores[lam] = val_ndcg(net, j)
        chosen[modality] = max(scores, key=lambda lam: scores[lam])
        head.set_linear(*ridge_map(inputs[modality][have], targets[have], chosen[modality]))
    return chosen


def content_factors(
    events: Interactions,
    factors: Factors,
    warm: Table,
    val: Table,
    config: TrainConfig,
    val_pos: dict[str, set[str]],
) -> tuple[Factors, TagFactors, dict[str, float]]:
    """Plain ALS or content-regularised ALS (each pull in `config.content_pulls` times each ridge lambda of the
    content map from the frozen features), whichever ranks cold validation items best when they are predicted by a
    ridge map from their content features, with the tags' target encoding of the resulting factors, onto those
    factors. Returns the factors, their tag encoding and the chosen pull and lambda (the text head's ridge start uses
    the same lambda)."""
    rows = {item: k for k, item in enumerate(warm.ids)}
    with_content = np.array([item in rows for item in factors.item_ids])
    ordered = warm.subset([i for i in factors.item_ids if i in rows])  # factor order, items with content

    def encoding(items: np.ndarray) -> TagFactors:
        return TagFactors.fit(ordered.tags, items[with_content])

    def content_map(items: np.ndarray, lam: float, tags: TagFactors | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge map from the warm items' content features (with the tags' target encoding `tags`, if given) onto
        `items`; its predictions for the warm and the validation items."""
        own = items[with_content]
        x = head_input((ordered if tags is None else ordered.with_tag_factors(tags, own)).feats)
        w, b = ridge_map(x, torch.from_numpy(own).float(), lam)
        return x @ w.T + b, head_input((val if tags is None else val.with_tag_factors(tags)).feats) @ w.T + b

    def score(f: Factors, lam: float) -> float:
        return cold_ndcg(f.user_ids, f.users, val.ids, content_map(f.items, lam, encoding(f.items))[1].numpy(), val_pos)

    def prior(lam: float) -> Callable[[np.ndarray], np.ndarray]:
        def where_content_puts(items: np.ndarray) -> np.ndarray:
            """Frozen features only: the tags' encoding of the factors being solved would pull them toward
            themselves (measured: cold validation 0.3930 with it, 0.4019 without, three MovieLens seeds)."""
            out = np.full(items.shape, np.nan)
            out[with_content] = content_map(items, lam, None)[0].double().numpy()
            return out

        return where_content_puts

    plain = {lam: score(factors, lam) for lam in config.content_lambdas}
    lam = max(plain, key=lambda k: plain[k])
    best, chosen = {"pull": 0.0, "lambda": lam, "cold_val_ndcg@20": round(plain[lam], 4)}, factors
    pulls = config.content_pulls if bool(warm.masks[:, :2].any()) else ()  # no text or image: nothing to pull toward
    for pull, lam in itertools.product(pulls, config.content_lambdas):
        f = content_regularised_als(
            events,
            factors,
            prior(lam),
            pull,
            alpha=config.als_alpha,
            regularization=config.als_reg,
            rounds=config.content_rounds,
        )
        if (now := score(f, lam)) > best["cold_val_ndcg@20"]:
            best, chosen = {"pull": pull, "lambda": lam, "cold_val_ndcg@20": round(now, 4)}, f
    log.info("CF factors: content pull %s (linear map: cold-val NDCG@20 %s)", best["pull"], best["cold_val_ndcg@20"])
    return chosen, encoding(chosen.items), best


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


def warm_factors(ds: Dataset, split: Split, config: TrainConfig) -> tuple[Interactions, Factors]:
    """The warm items' interactions and the ALS factors fitted on them with the config's settings."""
    events = training_events(ds, split)
    factors = fit_als(
        events,
        factors=config.factors,
        regularization=config.als_reg,
        iterations=config.als_iterations,
        alpha=config.als_alpha,
        seed=config.seed,
    )
    return events, factors


def train(
    ds: Dataset, split: Split, config: TrainConfig, *, progress: bool = True, features: Table | None = None
) -> ThawModel:
    """Train a model version. Only warm items' interactions reach ALS and the heads; cold validation items are
    used for early stopping and to tune alpha; cold test items are never read. `features` may hold the content
    features of the catalogue already (evaluation reuses them across seeds and methods). The model's metrics
    record each stage's wall time and peak memory."""
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
    with StageMeter() as meter:
        return _train(ds, split, config, meter, progress=progress, features=features)


def _train(
    ds: Dataset, split: Split, config: TrainConfig, meter: StageMeter, *, progress: bool, features: Table | None
) -> ThawModel:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    warm_events, factors = warm_factors(ds, split, config)
    meter.lap("als")

    val_ids = [i for i in split.cold_val if ds.items[i].modalities]
    head_ids = [i for i in factors.item_ids if ds.items[i].modalities]  # warm items with content to learn from
    if not head_ids:
        raise ValueError("no warm item has text, an image or audio: there is no content to learn from")
    if features is None:
        warm = content_table(item_inputs(ds, head_ids), progress=progress)
        val = content_table(item_inputs(ds, val_ids), progress=progress)
    else:
        warm, val = features.subset(head_ids), features.subset(val_ids)
    vocab = TagVocab.fit(warm.tags, min_count=config.tag_min_count)
    warm, val = warm.with_vocab(vocab), val.with_vocab(vocab)
    meter.lap("features")

    uix = {u: i for i, u in enumerate(factors.user_ids)}
    val_pos = {u: p for u, p in user_positives(ds.interactions, val_ids).items() if u in uix}
    factors, tag_factors, pull = content_factors(warm_events, factors, warm, val, config, val_pos)
    factor_row = {it: i for i, it in enumerate(factors.item_ids)}
    targets = torch.from_numpy(factors.items[[factor_row[i] for i in warm.ids]])
    warm, val = warm.with_tag_factors(tag_factors, targets.numpy()), val.with_tag_factors(tag_factors)
    meter.lap("content_als")

    iix = {it: i for i, it in enumerate(warm.ids)}
    prefs = torch.zeros(len(warm.ids), len(factors.user_ids))
    for u, i in zip(warm_events.user_ids.tolist(), warm_events.item_ids.tolist(), strict=True):
        if i in iix:
            prefs[iix[i], uix[u]] = 1.0
    users = torch.from_numpy(factors.users)

    def val_ndcg(net: ThawNet, alpha: float = 1.0, profiles: dict[str, np.ndarray] | None = None) -> float:
        pred = predict(net, val)
        return cold_ndcg(factors.user_ids, factors.users, val_ids, pred, val_pos, alpha=alpha, profiles=profiles)

    def val_ndcg_alone(net: ThawNet, j: int) -> float:
        """Cold-validation NDCG@20 of one modality's head on the validation items that have it."""
        have = val.masks[:, j]
        ids = [i for i, h in zip(val.ids, have.tolist(), strict=True) if h]
        pos = {u: p & set(ids) for u, p in val_pos.items() if p & set(ids)}
        only = torch.zeros_like(val.masks)
        only[:, j] = have
        return cold_ndcg(factors.user_ids, factors.users, ids, predict(net, val, only)[have.numpy()], pos)

    net = ThawNet(dim=config.factors, hidden=config.hidden, tag_dim=len(vocab), tag_factor_dim=tag_factors.width)
    frozen_inputs = {"text": head_input(warm.feats), "image": warm.feats["image"]}
    grids = {"text": [pull["lambda"]]}  # the text head starts at the content map the CF space was pulled toward
    ridge_lambdas = {}
    if config.ridge_init:
        ridge_lambdas = init_ridge(net, frozen_inputs, warm.masks, targets, val_ndcg_alone, grids)
    meter.lap("ridge")
    for modality in ridge_lambdas:  # the ridge maps stay fixed; the residual MLPs learn what they miss
        net.heads[modality].linear.requires_grad_(False)

    def loss_of(pred: torch.Tensor, idx: list[int]) -> torch.Tensor:
        return _loss(config.loss, pred, targets[idx], users, prefs[idx], config.als_alpha)

    def fit(
        params: list[torch.nn.Parameter],
        pool: list[int],
        batch_loss: Callable[[list[int]], torch.Tensor],
        score: Callable[[ThawNet], float],
        desc: str,
    ) -> tuple[float, list[dict[str, float]]]:
        """AdamW on `params` over minibatches of warm rows `pool`; the network keeps its best state by `score`."""
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        best, best_state = score(net), copy.deepcopy(net.state_dict())
        history = [{"epoch": 0, "cold_val_ndcg@20": round(best, 4)}]
        for epoch in tqdm(range(1, config.epochs + 1), desc=desc, disable=not progress):
            net.train()
            order = [pool[i] for i in rng.permutation(len(pool))]
            for start in range(0, len(order), config.batch_size):
                loss = batch_loss(order[start : start + config.batch_size])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                now = score(net)
                history.append({"epoch": epoch, "cold_val_ndcg@20": round(now, 4)})
                if now > best:
                    best, best_state = now, copy.deepcopy(net.state_dict())
        net.load_state_dict(best_state)
        return best, history

    histories: dict[str, list[dict[str, float]]] = {}
    with_audio = [i for i in range(len(warm.ids)) if warm.masks[i, AUDIO]]
    if with_audio:  # Spotify-style: the CNN and its head learn to predict the factors from audio alone first

        def audio_loss(idx: list[int]) -> torch.Tensor:
            _, mel, owner, _ = warm.batch(idx)
            return loss_of(net.heads["audio"](net.audio_embedding(augment(mel), owner, len(idx))), idx)

        audio_params = [*net.audio.parameters(), *net.heads["audio"].parameters()]
        audio_alone = functools.partial(val_ndcg_alone, j=AUDIO)
        trained, histories["audio"] = fit(audio_params, with_audio, audio_loss, audio_alone, "audio CNN")
        for p in audio_params:
            p.requires_grad_(False)
    meter.lap("audio_cnn")
    audio_emb = audio_embeddings(net, warm)  # frozen from here on: computed once
    if with_audio and config.ridge_init:  # a closed-form head on the learned embedding, kept where it is better
        head_state = copy.deepcopy(net.heads["audio"].state_dict())
        lam = init_ridge(net, {"audio": audio_emb}, warm.masks, targets, val_ndcg_alone)["audio"]
        if val_ndcg_alone(net, AUDIO) > trained:
            ridge_lambdas["audio"] = lam
        else:
            net.heads["audio"].load_state_dict(head_state)

    def fused_loss(idx: list[int]) -> torch.Tensor:
        feats, _, _, masks = warm.batch(idx)
        feats["audio"] = audio_emb[idx]
        keep = masks & (torch.rand(masks.shape) > config.modality_dropout)
        keep[~keep.any(1)] = masks[~keep.any(1)]
        fused, preds = net(feats, keep)
        loss = loss_of(fused, idx)
        for j in range(len(MODALITY_ORDER)):  # every head must work alone too
            have = masks[:, j]
            if have.any():
                loss = loss + 0.3 * loss_of(preds[have, j], [i for i, h in zip(idx, have.tolist(), strict=True) if h])
        return loss

    present = warm.masks.any(0).tolist()
    tune_fusion(net, val_ndcg, present)  # the linear heads, fused as validation says, are the start to beat
    trainable = [p for p in net.parameters() if p.requires_grad]
    best, histories["fused"] = fit(trainable, list(range(len(warm.ids))), fused_loss, val_ndcg, "residual heads")
    meter.lap("heads")
    fusion = tune_fusion(net, val_ndcg, present)

    served = warm.with_tag_factors(tag_factors)  # as a served item's content vector is encoded: its own factors count
    profiles = history_profiles(ds, warm.ids, predict(net, served))
    alphas = {a: val_ndcg(net, a, profiles) for a in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)}
    alpha = max(alphas, key=lambda a: (alphas[a], a))
    meter.lap("tuning")
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
        "history": histories,
        "ridge_lambdas": ridge_lambdas,
        "content_pull": pull,
        "stages": meter.stages,
        "n_val_users": len(val_pos),
        "n_tags": len(vocab),
        "n_tag_factor_fields": len(tag_factors.fields),
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
        vocab=vocab,
        tag_factors=tag_factors,
        metrics=metrics,
    )
    return model
