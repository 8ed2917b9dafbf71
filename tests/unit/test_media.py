"""Media I/O on real files: every audio format at several rates and channel counts, corrupt inputs, images."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from workers.media import MediaError, MediaStore, audio_crops, decode_audio, decode_image, sniff_kind

FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def tone(fmt: str, sr: int, channels: int, seconds: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(sr * seconds)) / sr
    wave = 0.4 * np.sin(2 * np.pi * hz * t)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    buf = io.BytesIO()
    sf.write(buf, data.astype(np.float32), sr, format=FORMATS[fmt][0], subtype=FORMATS[fmt][1])
    return buf.getvalue()


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize(("sr", "channels"), [(8000, 1), (22050, 2), (44100, 1), (48000, 2)])
def test_audio_of_any_format_rate_and_channels_decodes(fmt: str, sr: int, channels: int) -> None:
    data = tone(fmt, sr, channels, 1.0)
    assert sniff_kind(data) == fmt
    wave = decode_audio(data, sample_rate=16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 0.1 * 16000  # MP3 encoders pad a little
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 10


def test_long_audio_decodes_and_crops() -> None:
    wave = decode_audio(tone("flac", 22050, 2, 12.0), sample_rate=16000)
    crops = audio_crops(wave, sample_rate=16000, crop_seconds=3.0, max_crops=8)
    assert 4 <= len(crops) <= 8 and all(len(c) == 48000 for c in crops)
    np.testing.assert_array_equal(crops[0], wave[:48000])
    np.testing.assert_array_equal(crops[-1], wave[-48000:])
    short = audio_crops(wave[:1000], sample_rate=16000, crop_seconds=3.0)
    assert len(short) == 1 and len(short[0]) == 48000 and not short[0][1000:].any()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01garbage" * 50,
        tone("wav", 16000, 1, 1.0)[:44],
        b"RIFF\x00\x00\x00\x00WAVEfmt " + b"\xff" * 64,
        b"OggS" + b"\x00" * 300,
        b"plain text, not audio",
    ],
    ids=["empty", "random", "header-only", "garbled-wav", "garbled-ogg", "text"],
)
def test_corrupt_audio_raises_media_error(data: bytes) -> None:
    with pytest.raises(MediaError):
        decode_audio(data)


def test_half_an_mp3_decodes_or_fails_cleanly() -> None:
    data = tone("mp3", 44100, 1, 2.0)
    try:
        wave = decode_audio(data[: len(data) // 2])
        assert 0 < len(wave) < 2 * 16000
    except MediaError:
        pass


def test_too_long_audio_is_refused() -> None:
    with pytest.raises(MediaError, match="limit"):
        decode_audio(tone("wav", 8000, 1, 3.0), max_seconds=2.0)


def test_images_round_trip_and_corrupt_ones_fail() -> None:
    for fmt, kind in (("PNG", "png"), ("JPEG", "jpeg")):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format=fmt)
        img = decode_image(buf.getvalue())
        assert sniff_kind(buf.getvalue()) == kind and img.size == (40, 30) and img.mode == "RGB"
        r, g, b = img.getpixel((5, 5))  # type: ignore[misc]
        assert r > 180 and g < 40 and b < 40
        with pytest.raises(MediaError, match="corrupt"):
            decode_image(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(MediaError, match="expected an image"):
        decode_image(b"not an image at all")
    with pytest.raises(MediaError, match="empty"):
        decode_image(b"")


def test_decompression_bomb_is_refused_from_the_header() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", 50000, 50000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(MediaError, match="pixels"):
        decode_image(bytes(data), max_pixels=40_000_000)


def test_media_store_round_trip_and_paths(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    first = store.put("../../etc/passwd", "image", b"one")
    assert first.path.is_relative_to(tmp_path) and "passwd" not in str(first.path)
    assert store.get("../../etc/passwd", "image") == b"one"
    second = store.put("../../etc/passwd", "image", b"two")
    assert second.path == first.path and store.get("../../etc/passwd", "image") == b"two"
    assert second.sha256 != first.sha256
    store.delete("../../etc/passwd")
    assert store.get("../../etc/passwd", "image") is None
    with pytest.raises(ValueError, match="modality"):
        store.put("x", "video", b"")
