"""Workers: the only media I/O — upload -> media store -> worker decode (images, audio of any common format)."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

IMAGE_KINDS = ("jpeg", "png", "webp", "gif", "bmp")
AUDIO_KINDS = ("wav", "flac", "ogg", "mp3")
MODALITY_FILES = ("image", "audio")


class MediaError(ValueError):
    """Bad media: the message says what was expected and what arrived."""


def sniff_kind(data: bytes) -> str | None:
    """The media kind from magic bytes, or None."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def decode_image(data: bytes, *, max_pixels: int = 40_000_000) -> Image.Image:
    """A fully decoded RGB image; the pixel count is checked from the header before decoding."""
    if not data:
        raise MediaError("image is empty")
    kind = sniff_kind(data)
    if kind not in IMAGE_KINDS:
        raise MediaError(f"expected an image ({', '.join(IMAGE_KINDS)}), got {kind or 'unrecognised bytes'}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise MediaError(f"image has {width}x{height} pixels, more than the limit of {max_pixels}")
            if width == 0 or height == 0:
                raise MediaError("image has zero size")
            img.load()
            return img.convert("RGB")
    except MediaError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise MediaError(f"{kind} image is corrupt or truncated: {exc}") from exc


def decode_audio(data: bytes, *, sample_rate: int = 16000, max_seconds: float = 600.0) -> np.ndarray:
    """Mono float32 samples at `sample_rate` from WAV/FLAC/OGG/MP3 of any rate, channel count and length."""
    if not data:
        raise MediaError("audio is empty")
    kind = sniff_kind(data)
    if kind not in AUDIO_KINDS:
        raise MediaError(f"expected audio ({', '.join(AUDIO_KINDS)}), got {kind or 'unrecognised bytes'}")
    try:
        info = sf.info(io.BytesIO(data))
        if info.samplerate <= 0:
            raise MediaError("audio declares no sample rate")
        if info.frames > 0 and info.frames / info.samplerate > max_seconds:
            raise MediaError(
                f"audio lasts {info.frames / info.samplerate:.0f} s, more than the {max_seconds:.0f} s limit"
            )
        wave, rate = sf.read(
            io.BytesIO(data), dtype="float32", always_2d=True, frames=int(max_seconds * info.samplerate) + 1
        )
    except MediaError:
        raise
    except Exception as exc:  # libsndfile raises several types for damaged streams
        raise MediaError(f"{kind} audio is corrupt or truncated: {exc}") from exc
    if wave.shape[0] == 0:
        raise MediaError(f"{kind} audio has no samples")
    if wave.shape[0] / rate > max_seconds:
        raise MediaError(f"audio lasts more than the {max_seconds:.0f} s limit")
    mono = wave.mean(axis=1)
    if not np.isfinite(mono).all():
        raise MediaError(f"{kind} audio has non-finite samples")
    if rate != sample_rate:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_crops(wave: np.ndarray, *, sample_rate: int, crop_seconds: float, max_crops: int = 8) -> list[np.ndarray]:
    """Fixed-length crops: a short clip is zero-padded to one; a long one gives up to `max_crops` evenly spaced."""
    size = int(crop_seconds * sample_rate)
    if len(wave) <= size:
        return [np.pad(wave, (0, size - len(wave))).astype(np.float32)]
    n = min(max_crops, int(np.ceil(len(wave) / size)))
    starts = np.linspace(0, len(wave) - size, n).astype(int)
    return [wave[s : s + size].astype(np.float32) for s in starts]


@dataclass(frozen=True)
class StoredMedia:
    modality: str
    path: Path
    sha256: str
    kind: str | None


class MediaStore:
    """Filesystem store of originals, so items can be re-embedded. Paths derive from a hash of the item id and the
    modality; a client's file name never becomes a path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, item_id: str) -> Path:
        h = hashlib.sha256(item_id.encode()).hexdigest()
        return self.root / h[:2] / h[2:4] / h

    def _path(self, item_id: str, modality: str) -> Path:
        if modality not in MODALITY_FILES:
            raise ValueError(f"modality must be one of {MODALITY_FILES}, got {modality!r}")
        return self._dir(item_id) / modality

    def put(self, item_id: str, modality: str, data: bytes) -> StoredMedia:
        path = self._path(item_id, modality)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return StoredMedia(modality, path, hashlib.sha256(data).hexdigest(), sniff_kind(data))

    def get(self, item_id: str, modality: str) -> bytes | None:
        path = self._path(item_id, modality)
        return path.read_bytes() if path.is_file() else None

    def delete(self, item_id: str) -> None:
        for modality in MODALITY_FILES:
            self._path(item_id, modality).unlink(missing_ok=True)
