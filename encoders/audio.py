"""Encoders: audio -> log-mel spectrogram -> a CNN over time trained from scratch (Spotify-style)."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio
from torch import nn

from thaw.media import audio_crops

SAMPLE_RATE = 16000
CROP_SECONDS = 3.0
N_MELS = 64


@functools.lru_cache(maxsize=1)
def _mel() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=1024, hop_length=256, n_mels=N_MELS)


def log_mel_crops(wave: np.ndarray, max_crops: int = 8) -> torch.Tensor:
    """(crops, n_mels, frames) log-mel spectrograms of fixed-length crops of a mono 16 kHz clip."""
    crops = audio_crops(wave, sample_rate=SAMPLE_RATE, crop_seconds=CROP_SECONDS, max_crops=max_crops)
    with torch.no_grad():
        mel = _mel()(torch.from_numpy(np.stack(crops)))
    return torch.log1p(mel * 100.0)


class AudioCNN(nn.Module):
    """Convolutions over time with mel bins as channels, then global mean, max and L2 pooling over time."""

    def __init__(self, *, n_mels: int = N_MELS, channels: int = 96, dim: int = 128, pool: int = 4) -> None:
        super().__init__()
        self.config = {"n_mels": n_mels, "channels": channels, "dim": dim, "pool": pool}
        self.norm = nn.BatchNorm1d(n_mels)
        self.convs = nn.Sequential(
            nn.Conv1d(n_mels, channels, 4, padding="same"),
            nn.ReLU(),
            nn.MaxPool1d(pool),
            nn.Conv1d(channels, channels, 4, padding="same"),
            nn.ReLU(),
            nn.MaxPool1d(pool),
            nn.Conv1d(channels, channels, 4, padding="same"),
            nn.ReLU(),
        )
        self.proj = nn.Linear(3 * channels, dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """(n, n_mels, frames) -> (n, dim)."""
        h = self.convs(self.norm(mels))
        pooled = torch.cat([h.mean(-1), h.amax(-1), h.pow(2).mean(-1).clamp_min(1e-8).sqrt()], dim=1)
        return torch.relu(self.proj(pooled))


def augment(mels: torch.Tensor) -> torch.Tensor:
    """Training-time augmentation of a batch of log-mel crops (n, n_mels, frames): rolled in time by one random
    offset (where in a crop a beat or phrase starts says nothing about taste) and each crop's level shifted a little."""
    if not len(mels):
        return mels
    shift = int(torch.randint(0, mels.shape[-1], (1,)))
    return torch.roll(mels, shift, dims=-1) + 0.1 * torch.randn(len(mels), 1, 1)
