"""Adding images to the store: the path shared by the CLI and the HTTP API.

Files are decoded and described outside the write transaction, then each work is
committed on its own, so a failure (or a kill) costs at most the work in flight.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from detector import signatures
from detector.embedders import Embedders
from detector.images import ImageError, LoadedImage, iter_image_paths, load, shown
from index.names import NAME_RULE
from index.store import IndexesNotSaved, Store, StoreError

BATCH = 32


@dataclass
class AddReport:
    added: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, why)
    warning: str | None = None  # the works are added, but the search indexes could not be saved

    def summary(self) -> str:
        return f"added {len(self.added)}, skipped {len(self.skipped)}, failed {len(self.failed)}"


@contextmanager
def _warned(report: AddReport) -> Iterator[None]:
    """Works committed whose search indexes could not be saved are added: the report keeps the reason."""
    try:
        yield
    except IndexesNotSaved as e:
        report.warning = str(e)


def add_images(store: Store, embedders: Embedders, artist: str, images: Iterable[LoadedImage | ImageError],
               signature: bool = False, generated: dict | None = None, progress: bool = False,
               total: int | None = None, lock_timeout: float | None = None, existing_only: bool = False) -> AddReport:
    """Add decoded images (or decode errors, which are reported) as works or signature samples
    (`lock_timeout`: the wait for the store's write lock, `Store.writer`'s). `existing_only`: the
    artist must already be in the store, checked under the write lock (a name that the name rule
    refuses for new artists was let through because the artist existed; removed meanwhile, it must
    not come back as a new artist)."""
    report = AddReport()
    seen: set[str] = set()
    bar = tqdm(total=total, unit="img", desc="adding", disable=not progress, leave=False)
    with _warned(report), store.writer(lock_timeout) as w:
        if existing_only and not store.has_artist(artist):
            raise StoreError(f"no artist named {artist!r} any more (removed meanwhile), and new artist names are "
                             f"{NAME_RULE}")
        w.register([s for s in embedders.specs() if (s.owner == "signature") == signature])
        batch: list[LoadedImage] = []

        def flush() -> None:
            images = [b.image for b in batch]
            if signature:
                for img, vecs in zip(batch, embedders.describe_signatures(images)):
                    report.added.append(w.add_signature(artist, img.source, img.sha256, img.width, img.height,
                                                        vecs))
            else:
                for img, (vecs, thumb) in zip(batch, embedders.describe_works(images)):
                    report.added.append(w.add_work(artist, img.source, img.sha256, img.width, img.height, vecs,
                                                   generated=(generated or {}).get(img.source), thumbnail=thumb))
            bar.update(len(batch))
            batch.clear()

        for item in images:
            if isinstance(item, ImageError):
                report.failed.append((item.source, item.reason))
                bar.update(1)
                continue
            twin = None if item.sha256 in seen else store.holder(item.sha256, signature)
            if item.sha256 in seen or twin:
                where = "of another file added with it" if twin is None else f"of {twin}, already in the store"
                report.skipped.append((item.source, f"exact duplicate (same sha256) {where}"))
                bar.update(1)
                continue
            if signature and not signatures.paper_ink(np.asarray(item.image)).any():
                report.failed.append((item.source, "no ink found: a signature sample shows the signature, in ink "
                                                   "that differs from the paper's colour"))
                bar.update(1)
                continue
            seen.add(item.sha256)
            batch.append(item)
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
    bar.close()
    return report


def load_paths(paths: list[Path], report_missing: list[tuple[str, str]]) -> Iterable[LoadedImage | ImageError]:
    """Decode every image under `paths`; unusable named paths go to `report_missing`."""
    for path, problem in iter_image_paths(paths):
        if problem:
            report_missing.append((shown(path), problem))
            continue
        try:
            yield load(path)
        except ImageError as e:
            yield e
