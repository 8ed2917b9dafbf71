"""Media decoding: bytes of an upload or a dataset file -> a checked image or mono audio (any common format)."""

from __future__ import annotations

import io

import librosa
import numpy as np
import soundfile as sf
from PIL import Image

from thaw.errors import InvalidInputError

IMAGE_KINDS = ("jpeg", "png", "webp", "gif", "bmp")
AUDIO_KINDS = ("wav", "flac", "ogg", "mp3")
MEDIA_MODALITIES = ("image", "audio")  # the modalities that arrive as files


class MediaError(InvalidInputError):
    """Bad media: the message says what was expected and what arrived."""


def sniff_kind(data: bytes) -> str | None:
    """The media kind from magic bytes (one of IMAGE_KINDS or AUDIO_KINDS), or None if unrecognised."""
    head = data[:12]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"ID3"):
        return "mp3"
    # MPEG audio frame sync: 11 set bits, a defined version (not 01) and layer (not 00, which is ADTS AAC).
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x18 != 0x08 and head[1] & 0x06:
        return "mp3"
    return None


def _kind_or_fail(data: bytes, expected: str, kinds: tuple[str, ...]) -> str:
    if not data:
        raise MediaError(f"expected {expected} ({', '.join(kinds)}), got empty bytes")
    kind = sniff_kind(data)
    if kind not in kinds:
        raise MediaError(f"expected {expected} ({', '.join(kinds)}), got {kind or 'unrecognised bytes'}")
    return kind


def decode_image(data: bytes, *, max_pixels: int = 40_000_000) -> Image.Image:
    """A fully decoded RGB image. The pixel count is checked from the header before any pixel is decoded."""
    kind = _kind_or_fail(data, "an image", IMAGE_KINDS)
    try:
        img = Image.open(io.BytesIO(data), formats=[kind.upper()])  # only the decoder the magic bytes name
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{kind} image declares more pixels than the decoder allows: {exc}") from exc
    except Exception as exc:  # PIL raises several types for unreadable headers
        raise MediaError(f"{kind} image header is corrupt: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise MediaError(f"expected a non-empty image, got {width}x{height} pixels")
    if width * height > max_pixels:
        raise MediaError(f"expected at most {max_pixels} pixels, got {width}x{height} = {width * height} pixels")
    try:
        img.load()  # every pixel decoded; truncated data fails here (LOAD_TRUNCATED_IMAGES stays off)
        return img.convert("RGB")
    except Exception as exc:
        raise MediaError(f"{kind} image is corrupt or truncated: {exc}") from exc


def decode_audio(data: bytes, *, sample_rate: int = 16000, max_seconds: float = 600.0) -> np.ndarray:
    """Mono float32 samples at `sample_rate` from WAV/FLAC/OGG/MP3 of any rate, channel count and length."""
    if sample_rate <= 0 or max_seconds <= 0:
        raise ValueError(f"sample_rate and max_seconds must be positive, got {sample_rate} and {max_seconds}")
    kind = _kind_or_fail(data, "audio", AUDIO_KINDS)
    try:
        with sf.SoundFile(io.BytesIO(data)) as stream:  # the header first: refuse long clips before reading samples
            rate, channels = stream.samplerate, stream.channels
            if rate <= 0:
                raise MediaError(f"expected a positive sample rate in the {kind} header, got {rate}")
            if stream.frames / rate > max_seconds:
                raise MediaError(f"expected at most {max_seconds:g} s of audio, got {stream.frames / rate:.1f} s")
            limit = int(max_seconds * rate) + 1  # headers can lie: never read more than the limit
            if stream.subtype == "PCM_16":  # libsndfile's float of a 16-bit sample is x / 32768: 3x faster in numpy
                pcm = np.frombuffer(stream.buffer_read(limit, dtype="int16"), np.int16)
                wave = pcm.reshape(-1, channels).astype(np.float32) * np.float32(1 / 32768)
            else:
                wave = stream.read(limit, dtype="float32", always_2d=True)
    except MediaError:
        raise
    except Exception as exc:  # libsndfile raises several types for damaged streams
        reason = getattr(exc, "error_string", None) or exc  # libsndfile's own words, without the BytesIO repr
        raise MediaError(f"{kind} audio is corrupt or truncated: {reason}") from exc
    if wave.shape[0] == 0:
        raise MediaError(f"expected audio samples, got a {kind} stream with none")
    if wave.shape[0] > max_seconds * rate:
        raise MediaError(f"expected at most {max_seconds:g} s of audio, got more than its header declared")
    mono = wave[:, 0] if channels == 1 else wave.mean(axis=1)
    if not np.isfinite(mono).all():
        raise MediaError(f"expected finite samples, got NaN or infinity in the {kind} stream")
    if rate != sample_rate:
        try:
            mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate)
        except Exception as exc:
            raise MediaError(f"cannot resample {kind} audio from {rate} Hz to {sample_rate} Hz: {exc}") from exc
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_crops(wave: np.ndarray, *, sample_rate: int, crop_seconds: float, max_crops: int = 8) -> list[np.ndarray]:
    """Fixed-length float32 crops: a short clip is zero-padded to one crop; a longer one gives up to `max_crops`
    evenly spaced (possibly overlapping) crops, the first at the start and the last ending at the clip's end."""
    size = round(crop_seconds * sample_rate)
    if wave.ndim != 1 or size <= 0 or max_crops < 1:
        raise ValueError(
            f"expected a 1-D wave, a positive crop length and max_crops >= 1, "
            f"got shape {wave.shape}, {size} samples and max_crops={max_crops}"
        )
    if len(wave) <= size:
        return [np.pad(wave, (0, size - len(wave))).astype(np.float32)]
    n = min(max_crops, -(-len(wave) // size))  # enough crops to cover every sample, if allowed
    starts = np.linspace(0, len(wave) - size, n).round().astype(int)
    return [wave[s : s + size].astype(np.float32) for s in starts]
