"""Services: the media store — the originals of every item, kept so items can be re-embedded later."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from thaw.media import MEDIA_MODALITIES, sniff_kind


@dataclass(frozen=True)
class StoredMedia:
    modality: str  # "image" | "audio"
    path: Path
    sha256: str  # of the stored bytes
    kind: str  # sniffed kind, "unknown" if the magic bytes name none


class MediaStore:
    """Filesystem media store: originals kept so items can be re-embedded later. Paths derive from the item id
    (sha256 of it, fanned out in two levels of subdirectories) and the modality; a client file name never
    becomes a path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, item_id: str) -> Path:
        h = hashlib.sha256(item_id.encode("utf-8")).hexdigest()
        return self.root / h[:2] / h[2:4] / h

    def _path(self, item_id: str, modality: str) -> Path:
        if modality not in MEDIA_MODALITIES:
            raise ValueError(f"expected modality one of {MEDIA_MODALITIES}, got {modality!r}")
        return self._dir(item_id) / modality

    def put(self, item_id: str, modality: str, data: bytes) -> StoredMedia:
        """Store (or replace) an item's original atomically: temp file in the same directory, fsync, rename."""
        path = self._path(item_id, modality)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{modality}-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # make the rename durable where directories can be fsynced
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return StoredMedia(modality, path, hashlib.sha256(data).hexdigest(), sniff_kind(data) or "unknown")

    def get(self, item_id: str, modality: str) -> bytes | None:
        try:
            return self._path(item_id, modality).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def prefetch(self, originals: Iterable[tuple[str, str]]) -> None:
        """Ask the kernel to start reading these (item id, modality) originals now, all at once, so that the reads
        that follow find them in memory instead of waiting for the disk one file after another."""
        for item_id, modality in originals:
            try:
                fd = os.open(self._path(item_id, modality), os.O_RDONLY)
            except OSError:
                continue  # missing: the read reports it
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def info(self, item_id: str, modality: str) -> StoredMedia | None:
        path = self._path(item_id, modality)
        if not path.is_file():
            return None
        with path.open("rb") as fh:
            kind = sniff_kind(fh.read(12)) or "unknown"
            fh.seek(0)
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return StoredMedia(modality, path, digest, kind)

    def delete(self, item_id: str) -> None:
        """Remove every original of the item; deleting an unknown item is a no-op."""
        for modality in MEDIA_MODALITIES:
            self._path(item_id, modality).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # absent, or holds a stray temp file
            self._dir(item_id).rmdir()
