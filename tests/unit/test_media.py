"""Media I/O on real files: every audio format at several rates, channel counts and lengths, corrupt inputs,
images and decompression bombs, crops, and the media store."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from services.media_store import MediaStore
from thaw.media import (
    AUDIO_KINDS,
    IMAGE_KINDS,
    MediaError,
    audio_crops,
    decode_audio,
    decode_image,
    sniff_kind,
)

SUBTYPES = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}


def write_tone(
    path: Path, sr: int, channels: int, seconds: float, hz: float = 440.0, subtype: str | None = None
) -> bytes:
    """A sine written to a real file (format from the suffix); returns its bytes."""
    t = np.arange(round(sr * seconds)) / sr
    wave = 0.4 * np.sin(2 * np.pi * hz * t)
    data = np.stack([wave] * channels, axis=1)
    fmt = path.suffix[1:]
    sf.write(path, data.astype(np.float32), sr, format=fmt.upper(), subtype=subtype or SUBTYPES[fmt])
    return path.read_bytes()


def dominant_hz(wave: np.ndarray, sr: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(wave))) * sr / len(wave))


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its header patched to declare width x height (CRC fixed); the pixel data stays small."""
    data = bytearray(png)
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


# --- audio ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.3, 12.0])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("fmt", AUDIO_KINDS)
def test_audio_of_any_format_rate_channels_and_length_decodes(
    tmp_path: Path, fmt: str, sr: int, channels: int, seconds: float
) -> None:
    data = write_tone(tmp_path / f"tone.{fmt}", sr, channels, seconds)
    assert sniff_kind(data) == fmt
    wave = decode_audio(data, sample_rate=16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    expected = 16000 * seconds
    tolerance = 0.02 * expected if fmt == "mp3" else 2  # MP3 encoders may pad
    assert abs(len(wave) - expected) <= tolerance
    assert abs(dominant_hz(wave, 16000) - 440) <= 10
    assert 0.3 < np.abs(wave).max() < 0.5  # the 0.4 amplitude survives downmix and resampling


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    left = 0.8 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "lr.wav", np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="FLOAT")
    wave = decode_audio((tmp_path / "lr.wav").read_bytes(), sample_rate=16000)
    np.testing.assert_allclose(wave, left / 2, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_16_bit_wav_gives_libsndfiles_samples(tmp_path: Path, channels: int) -> None:
    """16-bit PCM WAV is read by the standard library's parser; the samples are libsndfile's, to the bit."""
    pcm = np.random.default_rng(channels).integers(-32768, 32768, size=(8000, channels)).astype(np.int16)
    sf.write(tmp_path / "p.wav", pcm, 8000, subtype="PCM_16")
    expected = sf.read(tmp_path / "p.wav", dtype="float32", always_2d=True)[0].mean(axis=1)
    wave = decode_audio((tmp_path / "p.wav").read_bytes(), sample_rate=8000)
    np.testing.assert_array_equal(wave, expected.astype(np.float32))


def test_resampling_to_another_rate(tmp_path: Path) -> None:
    wave = decode_audio(write_tone(tmp_path / "t.flac", 44100, 1, 1.0), sample_rate=22050)
    assert len(wave) == 22050 and abs(dominant_hz(wave, 22050) - 440) <= 10


def _garbled_data_chunk_header(tmp_path: Path) -> bytes:
    data = bytearray(write_tone(tmp_path / "g.wav", 16000, 1, 1.0))
    at = data.index(b"data")
    data[at : at + 8] = b"\xde\xad\xbe\xef\xff\xff\xff\x7f"
    return bytes(data)


def _nan_samples(tmp_path: Path) -> bytes:
    data = bytearray(write_tone(tmp_path / "n.wav", 16000, 1, 1.0, subtype="FLOAT"))
    at = data.index(b"data") + 8
    data[at:] = b"\xff" * (len(data) - at)  # all-ones float32 is NaN
    return bytes(data)


def _zero_samples(tmp_path: Path) -> bytes:
    sf.write(tmp_path / "z.wav", np.zeros(0, dtype=np.float32), 16000)
    return (tmp_path / "z.wav").read_bytes()


CORRUPT_AUDIO = {
    "empty": lambda p: b"",
    "random": lambda p: np.random.default_rng(0).bytes(4096),
    "text": lambda p: b"plain text, not audio at all\n" * 20,
    "header-only-wav": lambda p: write_tone(p / "h.wav", 16000, 1, 1.0)[:44],
    "garbled-data-chunk": _garbled_data_chunk_header,
    "nan-samples": _nan_samples,
    "zero-samples": _zero_samples,
    "garbled-ogg": lambda p: b"OggS" + b"\x00" * 300,
    "garbled-flac": lambda p: b"fLaC" + np.random.default_rng(1).bytes(500),
    "id3-only": lambda p: b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "png-as-audio": lambda p: png_bytes((4, 4)),
}


@pytest.mark.parametrize("make", CORRUPT_AUDIO.values(), ids=CORRUPT_AUDIO.keys())
def test_corrupt_audio_raises_media_error(tmp_path: Path, make: object) -> None:
    data = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(MediaError) as err:
        decode_audio(data)
    assert type(err.value) is MediaError and str(err.value)


def test_wrong_kind_names_what_arrived(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="expected audio .* got png"):
        decode_audio(png_bytes((4, 4)))
    with pytest.raises(MediaError, match="got unrecognised bytes"):
        decode_audio(b"plain text")
    with pytest.raises(MediaError, match="got empty bytes"):
        decode_audio(b"")
    with pytest.raises(MediaError, match="non-finite|NaN"):
        decode_audio(_nan_samples(tmp_path))


def test_half_an_mp3_decodes_the_first_half_or_fails_cleanly(tmp_path: Path) -> None:
    data = write_tone(tmp_path / "t.mp3", 44100, 2, 4.0)
    try:
        wave = decode_audio(data[: len(data) // 2])
    except MediaError:
        return
    assert 1 * 16000 < len(wave) < 2.5 * 16000 and wave.dtype == np.float32  # about the first 2 s of 4
    assert abs(dominant_hz(wave, 16000) - 440) <= 10


@pytest.mark.parametrize("fmt", AUDIO_KINDS)
def test_audio_longer_than_the_limit_is_refused(tmp_path: Path, fmt: str) -> None:
    data = write_tone(tmp_path / f"long.{fmt}", 8000, 1, 3.0)
    with pytest.raises(MediaError, match="at most 2 s"):
        decode_audio(data, max_seconds=2.0)
    assert len(decode_audio(data, max_seconds=3.5)) > 0


# --- crops ---------------------------------------------------------------------------------------------------


def test_short_clip_is_zero_padded_to_one_crop() -> None:
    wave = np.ones(1000, dtype=np.float32)
    (crop,) = audio_crops(wave, sample_rate=16000, crop_seconds=3.0)
    assert crop.shape == (48000,) and crop.dtype == np.float32
    assert crop[:1000].all() and not crop[1000:].any()


def test_long_clip_gives_max_crops_covering_the_clip() -> None:
    wave = np.arange(30 * 16000, dtype=np.float32)  # sample value == its index
    crops = audio_crops(wave, sample_rate=16000, crop_seconds=3.0, max_crops=5)
    assert len(crops) == 5 and all(c.shape == (48000,) for c in crops)
    assert crops[0][0] == 0 and crops[-1][-1] == len(wave) - 1
    starts = [int(c[0]) for c in crops]
    assert starts == sorted(starts) and len(set(np.diff(starts))) <= 2  # evenly spaced up to rounding


def test_slightly_long_clip_gives_overlapping_crops() -> None:
    wave = np.arange(4 * 16000, dtype=np.float32)
    crops = audio_crops(wave, sample_rate=16000, crop_seconds=3.0, max_crops=8)
    assert len(crops) == 2 and crops[0][0] == 0 and crops[1][-1] == len(wave) - 1


def test_crops_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="1-D"):
        audio_crops(np.zeros((2, 100)), sample_rate=16000, crop_seconds=1.0)
    with pytest.raises(ValueError, match="max_crops"):
        audio_crops(np.zeros(100), sample_rate=16000, crop_seconds=1.0, max_crops=0)


# --- images --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", IMAGE_KINDS)
def test_image_round_trip(fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format=fmt.upper())
    assert sniff_kind(buf.getvalue()) == fmt
    img = decode_image(buf.getvalue())
    assert img.size == (40, 30) and img.mode == "RGB"
    r, g, b = img.getpixel((5, 5))  # type: ignore[misc]
    assert r > 180 and g < 40 and b < 40


def test_palette_and_alpha_images_become_rgb() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 255, 128)).save(buf, format="PNG")
    assert decode_image(buf.getvalue()).mode == "RGB"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_refused(fmt: str) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    with pytest.raises(MediaError, match="corrupt"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = with_ihdr_size(png_bytes((10, 10)), 50000, 50000)
    with pytest.raises(MediaError, match="pixels"):
        decode_image(bomb)
    # Below PIL's own limit but above ours: only a header check can say "pixels" (decoding would say truncated).
    big = with_ihdr_size(png_bytes((10, 10)), 8000, 6000)
    with pytest.raises(MediaError, match="at most 40000000 pixels, got 8000x6000"):
        decode_image(big)
    with pytest.raises(MediaError, match="at most 99 pixels"):
        decode_image(png_bytes((10, 10)), max_pixels=99)


def test_zero_size_and_non_images_are_refused() -> None:
    with pytest.raises(MediaError):
        decode_image(with_ihdr_size(png_bytes((10, 10)), 0, 10))
    with pytest.raises(MediaError, match="expected an image .* got unrecognised bytes"):
        decode_image(b"not an image at all")
    with pytest.raises(MediaError, match="got wav"):
        decode_image(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    with pytest.raises(MediaError, match="got empty bytes"):
        decode_image(b"")
    with pytest.raises(MediaError):
        decode_image(b"BM" + b"\x00" * 100)


# --- sniffing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\xff\xfb\x90\x00", "mp3"),  # MPEG-1 layer III frame sync
        (b"\xff\xf1\x50\x80", None),  # ADTS AAC: layer bits 00
        (b"\xff\xd8\xff\xe0", "jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", None),
        (b"", None),
        (b"\xff", None),
    ],
)
def test_sniff_kind(head: bytes, kind: str | None) -> None:
    assert sniff_kind(head) == kind


# --- media store ---------------------------------------------------------------------------------------------


def test_media_store_round_trip_replace_and_delete(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    png = png_bytes((4, 4))
    first = store.put("item-1", "image", png)
    assert store.get("item-1", "image") == png
    assert first == store.info("item-1", "image")
    assert first.sha256 == hashlib.sha256(png).hexdigest() and first.kind == "png" and first.modality == "image"
    h = hashlib.sha256(b"item-1").hexdigest()
    assert first.path == tmp_path / h[:2] / h[2:4] / h / "image"

    second = store.put("item-1", "image", b"not validated here")
    assert second.path == first.path and second.kind == "unknown"
    assert store.get("item-1", "image") == b"not validated here"
    store.put("item-1", "audio", b"RIFF....WAVE")
    store.put("item-2", "image", png)
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["audio", "image"]  # no temp files left

    store.delete("item-1")
    assert store.get("item-1", "image") is None and store.get("item-1", "audio") is None
    assert store.info("item-1", "image") is None and not first.path.parent.exists()
    assert store.get("item-2", "image") == png
    store.delete("never-stored")
    store.prefetch([("item-2", "image"), ("item-1", "image"), ("never-stored", "audio")])  # the missing are left out
    assert store.get("item-2", "image") == png


def test_media_store_treats_ids_opaquely(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "store")
    for item_id in ("../../etc/passwd", "/etc/passwd", "a/../../b", "ü\x00💥"):
        stored = store.put(item_id, "audio", b"x")
        assert stored.path.resolve().is_relative_to((tmp_path / "store").resolve())
        assert "passwd" not in str(stored.path) and ".." not in stored.path.parts
        assert store.get(item_id, "audio") == b"x"
    assert not (tmp_path / "etc").exists()


def test_media_store_refuses_unknown_modality(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    calls = [lambda: store.put("x", "video", b""), lambda: store.get("x", "video"), lambda: store.info("x", "")]
    for call in [*calls, lambda: store.prefetch([("x", "video")])]:
        with pytest.raises(ValueError, match="modality"):
            call()
