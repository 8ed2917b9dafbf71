"""Does fine-tuning MiniLM's last transformer layer pay for cold start? One split, text only, same ALS factors:
frozen MiniLM + ridge (lambda tuned on cold validation) against the last layer fine-tuned (with a linear head that
starts at that ridge solution) on the training objective, early-stopped on cold validation. Writes JSON."""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from encoders.linear import ridge_map  # noqa: E402
from encoders.text import _model  # noqa: E402
from encoders.training import TrainConfig, loss_fn, warm_factors  # noqa: E402
from thaw.datasets import load_dataset, split_items  # noqa: E402
from thaw.evaluation import (
    cold_ndcg,  # noqa: E402
    user_positives,  # noqa: E402
)


@torch.no_grad()
def below_last_layer(texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states entering MiniLM's last layer, and the attention masks (computed once: the lower layers stay
    frozen)."""
    st = _model()
    bert = st[0].auto_model
    states, masks = [], []
    for start in range(0, len(texts), 64):
        enc = st.tokenizer(
            texts[start : start + 64], padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
        )
        out = bert(**enc, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        masks.append(enc["attention_mask"])
    return torch.cat(states), torch.cat(masks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--min-rating", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    config = TrainConfig(seed=args.seed)
    ds = load_dataset(args.data, min_rating=args.min_rating)
    split = split_items(ds, seed=args.seed)
    events, factors = warm_factors(ds, split, config)
    ids = {"warm": [i for i in factors.item_ids if ds.items[i].text]}
    for name, group in (("val", split.cold_val), ("test", split.cold_test)):
        ids[name] = [i for i in group if ds.items[i].text]
    t = time.perf_counter()
    cache = {k: below_last_layer([ds.items[i].text for i in v], args.max_len) for k, v in ids.items()}
    cache_s = time.perf_counter() - t
    uix = {u: i for i, u in enumerate(factors.user_ids)}
    row = {i: k for k, i in enumerate(factors.item_ids)}
    targets = torch.from_numpy(factors.items[[row[i] for i in ids["warm"]]])
    users = torch.from_numpy(factors.users)
    prefs = torch.zeros(len(ids["warm"]), len(factors.user_ids))
    wix = {i: k for k, i in enumerate(ids["warm"])}
    for u, i in zip(events.user_ids.tolist(), events.item_ids.tolist(), strict=True):
        if i in wix:
            prefs[wix[i], uix[u]] = 1.0
    positives = {
        k: {u: p for u, p in user_positives(ds.interactions, ids[k]).items() if u in uix} for k in ("val", "test")
    }
    layer = copy.deepcopy(_model()[0].auto_model.encoder.layer[-1])

    def embed(states: torch.Tensor, mask: torch.Tensor, train: bool = False) -> torch.Tensor:
        layer.train(train)
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # padding masked out
        h = layer(states, attention_mask=additive)
        h = h[0] if isinstance(h, tuple) else h
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=1)

    def ndcg(name: str, w: torch.Tensor, b: torch.Tensor) -> float:
        with torch.no_grad():
            pred = (embed(*cache[name]) @ w.T + b).numpy()
        return cold_ndcg(factors.user_ids, factors.users, ids[name], pred, positives[name])

    with torch.no_grad():
        frozen_warm = embed(*cache["warm"])
    grid = {}
    for lam in (0.3, 1.0, 3.0, 10.0, 30.0):
        grid[lam] = ndcg("val", *ridge_map(frozen_warm, targets, lam))
    lam = max(grid, key=lambda k: grid[k])
    w0, b0 = ridge_map(frozen_warm, targets, lam)
    frozen = {"cold_val_ndcg@20": ndcg("val", w0, b0), "cold_test_ndcg@20": ndcg("test", w0, b0)}
    w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    opt = torch.optim.AdamW([*layer.parameters(), w, b], lr=args.lr, weight_decay=0.01)
    history, best = [], (frozen["cold_val_ndcg@20"], copy.deepcopy(layer.state_dict()), w0, b0, 0)
    t = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(ids["warm"])).tolist()
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            states, mask = cache["warm"]
            pred = embed(states[idx], mask[idx], train=True) @ w.T + b
            loss = loss_fn(config.loss, pred, targets[idx], users, prefs[idx], config.als_alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = ndcg("val", w.detach(), b.detach())
        history.append({"epoch": epoch, "cold_val_ndcg@20": round(score, 4), "s": round(time.perf_counter() - t, 1)})
        print(history[-1], flush=True)
        if score > best[0]:
            best = (score, copy.deepcopy(layer.state_dict()), w.detach().clone(), b.detach().clone(), epoch)
    layer.load_state_dict(best[1])
    tuned = {"cold_val_ndcg@20": best[0], "cold_test_ndcg@20": ndcg("test", best[2], best[3]), "epoch": best[4]}
    out = {
        "seed": args.seed,
        "max_len": args.max_len,
        "ridge_lambda": lam,
        "frozen": frozen,
        "fine_tuned_last_layer": tuned,
        "history": history,
        "cache_s": round(cache_s, 1),
        "train_s": round(time.perf_counter() - t, 1),
        "n_warm": len(ids["warm"]),
    }
    print(json.dumps(out, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
