"""Seeded synthetic catalog for the demo and tests: audio, image and text whose content carries the tastes behind
simulated interactions, written in the dataset directory format that `load_dataset` reads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

SAMPLE_RATE = 16000

# Each latent taste has its own words, colour, shape, pitch and rhythm, so every modality can reveal it.
TOPICS: list[dict[str, object]] = [
    {
        "words": "space galaxy rocket astronaut planet alien orbit starship",
        "rgb": (20, 30, 120),
        "shape": "circle",
        "hz": 220.0,
        "beat": 2.0,
    },
    {
        "words": "love romance wedding kiss heart couple date letter",
        "rgb": (220, 60, 120),
        "shape": "heart",
        "hz": 330.0,
        "beat": 1.0,
    },
    {
        "words": "war soldier battle army tank general trench rifle",
        "rgb": (90, 90, 40),
        "shape": "square",
        "hz": 110.0,
        "beat": 4.0,
    },
    {
        "words": "detective murder crime police clue suspect alibi heist",
        "rgb": (30, 30, 30),
        "shape": "triangle",
        "hz": 165.0,
        "beat": 3.0,
    },
    {
        "words": "cartoon puppy toys family kids birthday circus magic",
        "rgb": (250, 200, 40),
        "shape": "circle",
        "hz": 523.0,
        "beat": 6.0,
    },
    {
        "words": "horror ghost haunted zombie vampire curse blood scream",
        "rgb": (120, 0, 0),
        "shape": "triangle",
        "hz": 82.0,
        "beat": 1.5,
    },
    {
        "words": "ocean sailing island beach surf whale pirate voyage",
        "rgb": (0, 150, 200),
        "shape": "stripes",
        "hz": 392.0,
        "beat": 2.5,
    },
    {
        "words": "football basketball champion coach team stadium race medal",
        "rgb": (40, 160, 40),
        "shape": "square",
        "hz": 262.0,
        "beat": 5.0,
    },
]
FILLER = ["the", "a", "story", "of", "an", "about", "with", "who", "in", "their", "one", "new", "old", "great"]


def _image(mix: np.ndarray, rng: np.random.Generator, size: int = 64) -> Image.Image:
    main = int(np.argmax(mix))
    rgb = np.zeros(3)
    for k, w in enumerate(mix):
        rgb += w * np.array(TOPICS[k]["rgb"], float)
    bg = tuple(int(c) for c in np.clip(rgb + rng.normal(0, 12, 3), 0, 255))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    fg = tuple(255 - c for c in bg)
    shape, lo, hi = TOPICS[main]["shape"], size // 5, size - size // 5
    if shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=fg)
    elif shape == "square":
        draw.rectangle([lo, lo, hi, hi], fill=fg)
    elif shape == "triangle":
        draw.polygon([(size // 2, lo), (lo, hi), (hi, hi)], fill=fg)
    elif shape == "heart":
        draw.ellipse([lo, lo, size // 2, size // 2 + 4], fill=fg)
        draw.ellipse([size // 2, lo, hi, size // 2 + 4], fill=fg)
        draw.polygon([(lo, size // 2), (hi, size // 2), (size // 2, hi)], fill=fg)
    else:
        for y in range(0, size, 8):
            draw.rectangle([0, y, size, y + 3], fill=fg)
    return img


def _audio(mix: np.ndarray, rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.zeros_like(t)
    for k, w in enumerate(mix):
        if w < 0.05:
            continue
        hz = float(TOPICS[k]["hz"]) * rng.uniform(0.97, 1.03)  # type: ignore[arg-type]
        beat = float(TOPICS[k]["beat"])  # type: ignore[arg-type]
        envelope = 0.5 * (1 + np.sign(np.sin(2 * np.pi * beat * t + rng.uniform(0, 6.28))))
        tone = np.sin(2 * np.pi * hz * t) + 0.4 * np.sin(2 * np.pi * 2 * hz * t)
        wave += w * envelope * tone
    wave += rng.normal(0, 0.05, len(t))
    return (0.5 * wave / max(1e-6, float(np.abs(wave).max()))).astype(np.float32)


def _text(mix: np.ndarray, rng: np.random.Generator, n_words: int = 9) -> tuple[str, str]:
    topics = rng.choice(len(mix), size=n_words, p=mix)
    words = [str(rng.choice(str(TOPICS[k]["words"]).split())) for k in topics]
    title = " ".join(w.capitalize() for w in words[:2])
    body = []
    for w in words[2:]:
        body.extend([str(rng.choice(FILLER)), w])
    return title, " ".join(body).capitalize() + "."


def generate_catalog(
    out_dir: Path,
    *,
    n_items: int = 600,
    n_users: int = 400,
    events_per_user: int = 30,
    audio_seconds: float = 3.0,
    modality_rate: float = 0.8,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset directory and return it.

    Each item mixes one or two of the latent tastes; each user likes a few tastes; a user interacts with items
    drawn with probability ~ exp(4 * taste match) times an item popularity. Each modality is present with
    probability `modality_rate` (every item keeps at least one).
    """
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "media").mkdir(parents=True, exist_ok=True)
    n_topics = len(TOPICS)
    mixes = np.zeros((n_items, n_topics))
    for i in range(n_items):
        main, other = rng.choice(n_topics, size=2, replace=False)
        share = rng.uniform(0.65, 1.0)
        mixes[i, main], mixes[i, other] = share, 1 - share
    prefs = rng.dirichlet(np.full(n_topics, 0.3), size=n_users)
    popularity = rng.lognormal(0, 0.7, n_items)

    with (out / "items.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n_items):
            have = rng.random(3) < modality_rate
            if not have.any():
                have[rng.integers(3)] = True
            row: dict[str, object] = {"item_id": str(i)}
            if have[0]:
                row["title"], row["description"] = _text(mixes[i], rng)
            if have[1]:
                _image(mixes[i], rng).save(out / "media" / f"{i}.png")
                row["image"] = f"media/{i}.png"
            if have[2]:
                sf.write(out / "media" / f"{i}.wav", _audio(mixes[i], rng, audio_seconds), SAMPLE_RATE)
                row["audio"] = f"media/{i}.wav"
            fh.write(json.dumps(row) + "\n")

    with (out / "interactions.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "weight", "timestamp"])
        for u in range(n_users):
            logits = 4.0 * mixes @ (prefs[u] / prefs[u].max()) + np.log(popularity)
            p = np.exp(logits - logits.max())
            n = min(n_items, max(5, int(rng.poisson(events_per_user))))
            chosen = rng.choice(n_items, size=n, replace=False, p=p / p.sum())
            for j, i in enumerate(chosen):
                writer.writerow([f"u{u}", str(i), 1, 1_700_000_000 + u * 1000 + j])
    return out


def text_catalog(out_dir: Path, *, n_items: int, seed: int = 0) -> Path:
    """Write a text-only catalogue of `n_items` (title and description, each item one or two tastes, item ids
    `t0`, `t1`, ...) in the dataset directory format, with no interactions (a catalogue to onboard); return it."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "items.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n_items):
            mix = np.zeros(len(TOPICS))
            main, other = rng.choice(len(TOPICS), size=2, replace=False)
            mix[main] = rng.uniform(0.65, 1.0)
            mix[other] = 1 - mix[main]
            title, description = _text(mix, rng)
            fh.write(json.dumps({"item_id": f"t{i}", "title": title, "description": description}) + "\n")
    (out / "interactions.csv").write_text("user_id,item_id\n", encoding="utf-8")
    return out
