"""Encoders: training in stages over one state — ALS on warm interactions, the frozen features, the CF space content
can predict, ridge-started heads, the audio CNN, residual heads and fusion, then the cold-start scorer (Thaw's
regression onto CF factors, content_knn similarity to the user's history, or a blend); every choice is made on cold
validation items, and cold test items are never read. `train_all` (what `thaw train` runs) makes
the choices on an internal validation split, then refits on all the history with them."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from encoders.artifacts import ThawModel, model_config
from encoders.audio import augment
from encoders.features import Table, catalogue_features, content_table, item_inputs
from encoders.fusion import MODALITY_ORDER, ThawNet, audio_embeddings, head_input, predict
from encoders.linear import content_factors, init_ridge
from encoders.tags import TagFactors, TagVocab, without_words
from thaw.datasets import Dataset, Interactions, Split, split_items
from thaw.evaluation import cold_ndcg, cold_ndcg_grid, history_profiles, history_rows, user_positives
from thaw.factors import Factors, fit_als
from thaw.profiling import StageMeter
from thaw.schema import MODALITIES
from thaw.scoring import scorer_name

log = logging.getLogger(__name__)
LOSSES = ("mse", "wpe", "softmax")
AUDIO = MODALITY_ORDER.index("audio")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
KNN_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # content_knn's share of the cold-start score (thaw.scoring.score_items)
BLEND_MARGIN = 0.01  # a blend is chosen only when it beats both pure scorers by this share of cold-validation NDCG


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
    patience: int = 2  # a trained stage stops after this many cold-validation scorings without a gain (0: never)
    cf_shrinkage: float = 10.0
    ridge_init: bool = True
    tag_min_count: int = 2  # a tag must appear on this many warm items to enter the vocabulary
    # content-regularised ALS: pulls tried (0, plain ALS, is always a candidate) x ridge lambdas of the content map
    content_pulls: tuple[float, ...] = (10.0, 40.0, 80.0)
    content_lambdas: tuple[float, ...] = (3.0, 10.0)
    content_rounds: int = 4
    # item-based kNN content similarity among the scorer candidates (thaw.scoring.knn_similarity's sharpness beta;
    # 0 is the cosine to the history's centroid); opt-in, not in the default grid (docs/evaluation.md): the prose
    # words' target encoding in the tag features (thaw.schema.item_words) with (False, True)
    text_words: tuple[bool, ...] = (False,)
    knn_betas: tuple[float, ...] = (0.0, 10.0)
    seed: int = 0


def loss_fn(
    kind: str, pred: torch.Tensor, target: torch.Tensor, users: torch.Tensor, prefs: torch.Tensor, alpha: float
) -> torch.Tensor:
    """The heads' objective: `mse` regresses onto the item factors (van den Oord et al.); `wpe` is the weighted
    prediction error on user-item preferences; `softmax` a softmax over users against their factors."""
    if kind == "mse":
        return ((pred - target) ** 2).sum(-1).mean()
    scores = pred @ users.T
    if kind == "wpe":
        return ((1 + alpha * prefs) * (prefs - scores) ** 2).mean()
    dist = prefs / prefs.sum(-1, keepdim=True).clamp_min(1e-8)
    return -(dist * torch.log_softmax(scores, dim=-1)).sum(-1).mean()


@dataclass
class Preferences:
    """The warm rows' 0/1 preferences over the users, sparse (CSR: row r's users are
    `cols[indptr[r]:indptr[r + 1]]`), with the users' factors and their Gram U^T U for the WPE loss."""

    indptr: np.ndarray
    cols: np.ndarray
    factors: torch.Tensor  # (n_users, d)
    gram: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        u = self.factors.double()
        self.gram = (u.T @ u).to(self.factors.dtype)

    def pairs(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The (batch row, user) pairs with preference 1 among rows `idx`."""
        starts, stops = self.indptr[idx], self.indptr[np.asarray(idx) + 1]
        owner = np.repeat(np.arange(len(idx)), stops - starts)
        parts = [self.cols[a:b] for a, b in zip(starts, stops, strict=True)]
        users = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return torch.from_numpy(owner), torch.as_tensor(users, dtype=torch.long)

    def dense(self, idx: list[int]) -> torch.Tensor:
        """(len(idx), n_users) 0/1 preferences of rows `idx`."""
        out = torch.zeros(len(idx), len(self.factors))
        out[self.pairs(idx)] = 1.0
        return out


def wpe_loss(pred: torch.Tensor, prefs: Preferences, idx: list[int], alpha: float) -> torch.Tensor:
    """loss_fn("wpe") of rows `idx` without the (rows x users) score matrix: with 0/1 preferences p and scores
    s = x.y_u, sum_u (1 + alpha p)(p - s)^2 = x^T (U^T U) x + sum over the row's users with p = 1 of
    1 - 2s + alpha (1 - s)^2 (implicit ALS's Gram trick), so a row costs d^2 plus its positives, not all users."""
    owner, users = prefs.pairs(idx)
    s = (pred[owner] * prefs.factors[users]).sum(1)
    total = ((pred @ prefs.gram) * pred).sum() + (1.0 - 2.0 * s + alpha * (1.0 - s) ** 2).sum()
    return total / (len(idx) * len(prefs.factors))


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


@dataclass
class Choices:
    """What cold validation decided in one training run; a refit on all the history (no validation items left)
    replays them instead of choosing."""

    pull: dict[str, float]  # content pull, the ridge lambda of the content map, prose words read (content_factors)
    ridge_lambdas: dict[str, float]  # per head; audio present when its closed-form head won
    epochs: dict[str, int]  # the epoch whose state was kept, per trained stage ("audio", "fused")
    fusion_start: list[float]  # the fusion's log-weights the residual training started from
    fusion: list[float]  # ... and those kept after it
    alpha: float
    cold_val_ndcg: float
    knn_weight: float = 0.0
    knn_beta: float = 0.0


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """torch's intra-op threads set to one inside the block (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


@dataclass
class TrainState:
    """Everything the stages share; each stage reads what earlier stages set and sets its own fields."""

    ds: Dataset
    split: Split
    config: TrainConfig
    progress: bool
    features: Table | None  # the catalogue's frozen features, when the caller has them already
    rng: np.random.Generator = field(init=False)
    events: Interactions = field(init=False)  # warm items' interactions
    factors: Factors = field(init=False)
    val_ids: list[str] = field(init=False)
    val_pos: dict[str, set[str]] = field(init=False)  # users' positives among cold validation items
    warm: Table = field(init=False)  # warm items with content, in the heads' row order
    val: Table = field(init=False)
    vocab: TagVocab = field(init=False)
    tag_factors: TagFactors = field(init=False)
    pull: dict[str, float] = field(init=False)
    targets: torch.Tensor = field(init=False)  # the warm rows' CF factors
    prefs: Preferences = field(init=False)  # the warm rows' 0/1 preferences over the users
    net: ThawNet = field(init=False)
    ridge_lambdas: dict[str, float] = field(default_factory=dict)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    audio_emb: torch.Tensor = field(init=False)
    best: float = 0.0  # cold-validation NDCG@20 of the trained heads
    fusion: float = 0.0  # ... after the final fusion tuning
    alphas: dict[float, float] = field(default_factory=dict)
    alpha: float = 1.0
    scorers: dict[tuple[float, float, float], float] = field(default_factory=dict)  # (alpha, knn weight, beta) -> NDCG
    knn_weight: float = 0.0
    knn_beta: float = 0.0
    fixed: Choices | None = None  # a refit: replay these choices, read no validation items
    fusion_start: list[float] = field(default_factory=list)
    model: ThawModel = field(init=False)
    epochs: dict[str, int] = field(default_factory=dict)

    def val_ndcg(self, net: ThawNet, alpha: float = 1.0, profiles: dict[str, np.ndarray] | None = None) -> float:
        pred = predict(net, self.val)
        f = self.factors
        return cold_ndcg(f.user_ids, f.users, self.val_ids, pred, self.val_pos, alpha=alpha, profiles=profiles)

    def val_ndcg_alone(self, net: ThawNet, j: int) -> float:
        """Cold-validation NDCG@20 of one modality's head on the validation items that have it."""
        have = self.val.masks[:, j]
        ids = [i for i, h in zip(self.val.ids, have.tolist(), strict=True) if h]
        pos = {u: p & set(ids) for u, p in self.val_pos.items() if p & set(ids)}
        only = torch.zeros_like(self.val.masks)
        only[:, j] = have
        pred = predict(net, self.val, only)[have.numpy()]
        return cold_ndcg(self.factors.user_ids, self.factors.users, ids, pred, pos)

    def loss_of(self, pred: torch.Tensor, idx: list[int]) -> torch.Tensor:
        c = self.config
        if c.loss == "wpe":
            return wpe_loss(pred, self.prefs, idx, c.als_alpha)
        return loss_fn(c.loss, pred, self.targets[idx], self.prefs.factors, self.prefs.dense(idx), c.als_alpha)

    def fit(
        self,
        params: list[torch.nn.Parameter],
        pool: list[int],
        batch_loss: Callable[[list[int]], torch.Tensor],
        score: Callable[[ThawNet], float],
        desc: str,
    ) -> tuple[float, list[dict[str, float]]]:
        """AdamW on `params` over minibatches of warm rows `pool`, scored every `eval_every` epochs and stopped
        after `patience` scorings without a gain; the network keeps its best state by `score`. In a refit it trains
        for the epochs the tuning run kept, and keeps the last state."""
        c, net = self.config, self.net
        opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        if self.fixed is not None:
            epochs = self.fixed.epochs.get(desc, c.epochs)
            score = lambda _net: 0.0  # noqa: E731  (nothing to validate on: every epoch trains, the last is kept)
        else:
            epochs = c.epochs
        best, best_state, best_epoch = score(net), copy.deepcopy(net.state_dict()), 0
        history = [{"epoch": 0, "cold_val_ndcg@20": round(best, 4)}]
        for epoch in tqdm(range(1, epochs + 1), desc=desc, disable=not self.progress):
            net.train()
            order = [pool[i] for i in self.rng.permutation(len(pool))]
            for start in range(0, len(order), c.batch_size):
                loss = batch_loss(order[start : start + c.batch_size])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if self.fixed is not None and epoch == epochs:
                best_state, best_epoch = copy.deepcopy(net.state_dict()), epoch
            elif self.fixed is None and (epoch % c.eval_every == 0 or epoch == epochs):
                now = score(net)
                history.append({"epoch": epoch, "cold_val_ndcg@20": round(now, 4)})
                if now > best:
                    best, best_state, best_epoch = now, copy.deepcopy(net.state_dict()), epoch
                elif c.patience and epoch - best_epoch >= c.patience * c.eval_every:
                    break  # `patience` scorings in a row without a gain: later epochs are not expected to pay
        net.load_state_dict(best_state)
        self.epochs[desc] = best_epoch
        return best, history


def fit_cf(s: TrainState) -> None:
    """ALS on the warm items' interactions."""
    torch.manual_seed(s.config.seed)
    s.rng = np.random.default_rng(s.config.seed)
    s.events, s.factors = warm_factors(s.ds, s.split, s.config)


def read_features(s: TrainState) -> None:
    """The frozen features of the warm items with content (the heads' rows) and of the cold validation items, and
    the tag vocabulary of the warm items."""
    ds = s.ds
    s.val_ids = [i for i in s.split.cold_val if ds.items[i].modalities]
    head_ids = [i for i in s.factors.item_ids if ds.items[i].modalities]
    if not head_ids:
        raise ValueError("no warm item has text, an image or audio: there is no content to learn from")
    if s.features is None:
        warm = content_table(item_inputs(ds, head_ids), progress=s.progress)
        val = content_table(item_inputs(ds, s.val_ids), progress=s.progress) if s.val_ids else warm.subset([])
    else:
        warm, val = s.features.subset(head_ids), s.features.subset(s.val_ids)
    s.vocab = TagVocab.fit(without_words(warm.tags), min_count=s.config.tag_min_count)
    s.warm, s.val = warm.with_vocab(s.vocab), val.with_vocab(s.vocab)


def shape_cf_space(s: TrainState) -> None:
    """Plain or content-regularised ALS, whichever content predicts best on cold validation; the heads' targets and
    the tags' target encoding follow from the chosen factors."""
    c = s.config
    uix = {u: i for i, u in enumerate(s.factors.user_ids)}
    s.val_pos = {u: p for u, p in user_positives(s.ds.interactions, s.val_ids).items() if u in uix}
    s.factors, s.tag_factors, s.pull = content_factors(
        s.events,
        s.factors,
        s.warm,
        s.val,
        s.val_pos,
        pulls=c.content_pulls,
        lambdas=c.content_lambdas,
        als_alpha=c.als_alpha,
        als_reg=c.als_reg,
        rounds=c.content_rounds,
        words=c.text_words,
        fixed=s.fixed.pull if s.fixed is not None else None,
    )
    factor_row = {it: i for i, it in enumerate(s.factors.item_ids)}
    s.targets = torch.from_numpy(s.factors.items[[factor_row[i] for i in s.warm.ids]])
    s.warm = s.warm.with_tag_factors(s.tag_factors, s.targets.numpy())  # leave-one-out: as a new item sees it
    s.val = s.val.with_tag_factors(s.tag_factors)


def start_heads(s: TrainState) -> None:
    """The network, each head's linear part at the ridge map chosen on cold validation (the text head at the
    content map the CF space was pulled toward); the ridge maps stay fixed from here on."""
    uix = {u: i for i, u in enumerate(s.factors.user_ids)}
    iix = {it: i for i, it in enumerate(s.warm.ids)}
    liked: list[set[int]] = [set() for _ in s.warm.ids]
    for u, i in zip(s.events.user_ids.tolist(), s.events.item_ids.tolist(), strict=True):
        if i in iix:
            liked[iix[i]].add(uix[u])
    indptr = np.concatenate([[0], np.cumsum([len(users) for users in liked])])
    users = np.array([u for row in liked for u in sorted(row)], dtype=np.int64)
    s.prefs = Preferences(indptr, users, torch.from_numpy(s.factors.users))
    c = s.config
    s.net = ThawNet(dim=c.factors, hidden=c.hidden, tag_dim=len(s.vocab), tag_factor_dim=s.tag_factors.width)
    if c.ridge_init:
        frozen = {"text": head_input(s.warm.feats), "image": s.warm.feats["image"]}
        grids: dict[str, list[float]] = {"text": [s.pull["lambda"]]}
        score: Callable[[ThawNet, int], float] = s.val_ndcg_alone
        if s.fixed is not None:
            frozen = {m: x for m, x in frozen.items() if m in s.fixed.ridge_lambdas}
            grids = {m: [s.fixed.ridge_lambdas[m]] for m in frozen}
            score = lambda _net, _j: 0.0  # noqa: E731  (one lambda per head: nothing to compare)
        s.ridge_lambdas = init_ridge(s.net, frozen, s.warm.masks, s.targets, score, grids)
    for modality in s.ridge_lambdas:
        s.net.heads[modality].linear.requires_grad_(False)


def train_audio(s: TrainState) -> None:
    """Spotify-style: the CNN and its head learn to predict the factors from audio alone; then frozen, with a
    closed-form head on the learned embedding kept where validation prefers it."""
    net, warm = s.net, s.warm
    with_audio = [i for i in range(len(warm.ids)) if warm.masks[i, AUDIO]]
    trained = 0.0
    if with_audio:

        def audio_loss(idx: list[int]) -> torch.Tensor:
            _, mel, owner, _ = warm.batch(idx)
            return s.loss_of(net.heads["audio"](net.audio_embedding(augment(mel), owner, len(idx))), idx)

        params = [*net.audio.parameters(), *net.heads["audio"].parameters()]
        alone = functools.partial(s.val_ndcg_alone, j=AUDIO)
        trained, s.histories["audio"] = s.fit(params, with_audio, audio_loss, alone, "audio CNN")
        for p in params:
            p.requires_grad_(False)
    s.audio_emb = audio_embeddings(net, warm)
    if with_audio and s.fixed is not None:
        if "audio" in s.fixed.ridge_lambdas:
            grid = {"audio": [s.fixed.ridge_lambdas["audio"]]}
            s.ridge_lambdas |= init_ridge(net, {"audio": s.audio_emb}, warm.masks, s.targets, lambda _n, _j: 0.0, grid)
    elif with_audio and s.config.ridge_init:
        head_state = copy.deepcopy(net.heads["audio"].state_dict())
        lam = init_ridge(net, {"audio": s.audio_emb}, warm.masks, s.targets, s.val_ndcg_alone)["audio"]
        if s.val_ndcg_alone(net, AUDIO) > trained:
            s.ridge_lambdas["audio"] = lam
        else:
            net.heads["audio"].load_state_dict(head_state)


def train_residuals(s: TrainState) -> None:
    """Residual MLPs on top of the fixed linear heads, trained on the fused prediction with modality dropout (every
    head must work alone too), starting from the linear heads fused as validation says; fusion re-tuned after."""
    net, warm, c = s.net, s.warm, s.config

    def fused_loss(idx: list[int]) -> torch.Tensor:
        feats, _, _, masks = warm.batch(idx)
        feats["audio"] = s.audio_emb[idx]
        keep = masks & (torch.rand(masks.shape) > c.modality_dropout)
        keep[~keep.any(1)] = masks[~keep.any(1)]
        fused, preds = net(feats, keep)
        loss = s.loss_of(fused, idx)
        for j in range(len(MODALITY_ORDER)):
            have = masks[:, j]
            if have.any():
                rows = [i for i, h in zip(idx, have.tolist(), strict=True) if h]
                loss = loss + 0.3 * s.loss_of(preds[have, j], rows)
        return loss

    present = warm.masks.any(0).tolist()
    if s.fixed is None:
        tune_fusion(net, s.val_ndcg, present)
    else:
        with torch.no_grad():
            net.weights.copy_(torch.tensor(s.fixed.fusion_start))
    s.fusion_start = net.weights.detach().tolist()
    heads = [net.heads[m] for m, have in zip(MODALITY_ORDER, present, strict=True) if have]  # absent: never used
    trainable = [net.weights, *(p for head in heads for p in head.parameters() if p.requires_grad)]
    with single_threaded():  # minibatches of a small MLP: a second thread costs more than it gives
        s.best, s.histories["fused"] = s.fit(trainable, list(range(len(warm.ids))), fused_loss, s.val_ndcg, "residuals")
    if s.fixed is None:
        s.fusion = tune_fusion(net, s.val_ndcg, present)
    else:
        with torch.no_grad():
            net.weights.copy_(torch.tensor(s.fixed.fusion))


def tune_blend(s: TrainState) -> None:
    """The cold-start scorer that ships as the serving default, chosen on cold validation among Thaw's regression
    onto CF factors (knn weight 0; alpha blends the CF score with similarity to the user's Thaw profile), content
    similarity to the user's history in content_knn's embedding (knn weight 1; the cosine to the history's centroid,
    or with a sharpness beta > 0 item-based kNN, the soft maximum of the cosines to the history's items), and their
    z-scored blends. A blend must beat the better pure scorer by BLEND_MARGIN (differences smaller than that are
    validation noise); ties go to the smaller knn weight, then the larger alpha, then the centroid."""
    if s.fixed is not None:
        s.alpha, s.knn_weight, s.knn_beta = s.fixed.alpha, s.fixed.knn_weight, s.fixed.knn_beta
        return
    served = s.warm.with_tag_factors(s.tag_factors)  # as a served item is encoded: its own factors count
    profiles = history_profiles(s.ds, s.warm.ids, predict(s.net, served))
    warm_knn = s.warm.knn()
    knn_profiles = history_profiles(s.ds, s.warm.ids, warm_knn)
    histories = history_rows(s.ds, s.warm.ids, warm_knn)
    pred, f, val_knn = predict(s.net, s.val), s.factors, s.val.knn()
    s.scorers = {}
    for beta in sorted(set(s.config.knn_betas) | {0.0}):
        # the knn weight 0 reads no content_knn similarity: scored once, with the centroid
        grid = [(a, w) for w in KNN_WEIGHTS if w > 0.0 or beta == 0.0 for a in (ALPHAS if w < 1.0 else (1.0,))]
        scores = cold_ndcg_grid(
            f.user_ids,
            f.users,
            s.val_ids,
            pred,
            s.val_pos,
            grid,
            profiles=profiles,
            knn=val_knn,
            knn_profiles=knn_profiles,
            knn_histories=histories,
            knn_beta=beta,
        )
        s.scorers |= {(a, w, beta): v for (a, w), v in scores.items()}
    s.alphas = {a: s.scorers[(a, 0.0, 0.0)] for a in ALPHAS}
    pure = [c for c in s.scorers if c[1] in (0.0, 1.0)]
    blends = [c for c in s.scorers if c not in pure]

    def rank(c: tuple[float, float, float]) -> tuple[float, float, float, float]:
        return s.scorers[c], -c[1], c[0], -c[2]

    best = max(pure, key=rank)
    blend = max(blends, key=rank, default=None)
    if blend is not None and s.scorers[blend] > (1.0 + BLEND_MARGIN) * s.scorers[best]:
        best = blend
    s.alpha, s.knn_weight, s.knn_beta = best


STAGES: tuple[tuple[str, Callable[[TrainState], None]], ...] = (
    ("als", fit_cf),
    ("features", read_features),
    ("content_als", shape_cf_space),
    ("ridge", start_heads),
    ("audio_cnn", train_audio),
    ("heads", train_residuals),
    ("tuning", tune_blend),
)


def choices(s: TrainState) -> Choices:
    """What this run chose on cold validation (a refit's are the ones it replayed)."""
    if s.fixed is not None:
        return s.fixed
    return Choices(
        pull={k: s.pull[k] for k in ("pull", "lambda", "words")},
        ridge_lambdas=dict(s.ridge_lambdas),
        epochs=dict(s.epochs),
        fusion_start=list(s.fusion_start),
        fusion=s.net.weights.detach().tolist(),
        alpha=s.alpha,
        cold_val_ndcg=round(max(s.best, s.fusion), 4),
        knn_weight=s.knn_weight,
        knn_beta=s.knn_beta,
    )


def assemble(s: TrainState, stages: dict[str, dict[str, float]]) -> ThawModel:
    config = model_config(
        s.net,
        modalities=[m for j, m in enumerate(MODALITIES) if bool(s.warm.masks[:, j].any())],
        alpha=s.alpha,
        knn_weight=s.knn_weight,
        knn_beta=s.knn_beta,
        als_reg=s.config.als_reg,
        als_alpha=s.config.als_alpha,
        cf_shrinkage=s.config.cf_shrinkage,
        training={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s.config).items()},  # as JSON reads it
        train_items=list(s.warm.ids),  # the heads' training set: warm items only (checked by the leakage test)
        train_users=len(s.factors.user_ids),
    )
    metrics = {
        "cold_val_ndcg@20": choices(s).cold_val_ndcg,
        "choices": asdict(choices(s)),
        "refit_on_all": s.fixed is not None,
        "alpha_grid": {str(a): round(v, 4) for a, v in s.alphas.items()},
        "scorer": scorer_name(s.knn_weight),
        "scorer_grid": {
            f"alpha={a},knn={w}" + (f",beta={b}" if b else ""): round(v, 4) for (a, w, b), v in s.scorers.items()
        },
        "history": s.histories,
        "ridge_lambdas": s.ridge_lambdas,
        "content_pull": s.pull,
        "stages": stages,
        "n_val_users": len(s.val_pos),
        "n_interactions": len(s.events),
        "n_tags": len(s.vocab),
        "n_tag_factor_fields": len(s.tag_factors.fields),
    }
    log.info(
        "trained: cold-val NDCG@20 %.4f, alpha %.2f, knn weight %.2f, beta %.1f",
        s.best,
        s.alpha,
        s.knn_weight,
        s.knn_beta,
    )
    f = s.factors
    return ThawModel(
        s.net,
        config=config,
        user_ids=f.user_ids,
        user_factors=f.users,
        item_ids=f.item_ids,
        item_factors=f.items,
        vocab=s.vocab,
        tag_factors=s.tag_factors,
        metrics=metrics,
    )


def _run(
    ds: Dataset, split: Split, config: TrainConfig, progress: bool, features: Table | None, fixed: Choices | None
) -> TrainState:
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
    state = TrainState(ds, split, config, progress, features, fixed=fixed)
    with StageMeter() as meter:
        for name, stage in STAGES:
            stage(state)
            meter.lap(name)
    state.model = assemble(state, meter.stages)
    return state


def train(
    ds: Dataset, split: Split, config: TrainConfig, *, progress: bool = True, features: Table | None = None
) -> ThawModel:
    """Train a model version. Only warm items' interactions reach ALS and the heads; cold validation items are
    used for early stopping and to choose the cold-start scorer; cold test items are never read. `features` may hold
    the content features of the catalogue already (evaluation reuses them across seeds and methods). The model's
    metrics record each stage's wall time and peak memory."""
    return _run(ds, split, config, progress, features, None).model


def train_all(
    ds: Dataset, config: TrainConfig, *, progress: bool = True, features: Table | None = None, val_share: float = 0.1
) -> ThawModel:
    """The model to serve: every choice (content pull, ridge lambdas, epochs, fusion weights, alpha, knn weight) is
    made on a seeded internal validation split (`val_share` of the items with interactions, drawn from
    `config.seed`), then the model is refitted on all the history with those choices, so every item with
    interactions gets learned CF factors. Its metrics keep the validation run's figures under "validation"."""
    features = catalogue_features(ds, progress=progress) if features is None else features  # read once for both
    drawn = split_items(ds, seed=config.seed, fractions=(val_share, val_share))
    internal = Split(sorted(drawn.warm + drawn.cold_test), drawn.cold_val, [])
    tuned = _run(ds, internal, config, progress, features, None)
    everything = Split(sorted(set(ds.interactions.item_ids.tolist())), [], [])
    model = _run(ds, everything, config, progress, features, choices(tuned)).model
    model.metrics["validation"] = {k: v for k, v in tuned.model.metrics.items() if k != "choices"}
    return model
