"""Bulk folder scans: score every image under a folder, one result per file.

Results are written as each file completes (JSON Lines or CSV), so an interrupted
scan keeps what it finished; an unreadable file becomes a record with `error` set.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from detector.embedders import Embedders
from detector.images import iter_image_paths
from detector.score import Scorer, error_result
from index.store import Store
from service.report import CSV_FIELDS, csv_row, write_html

FORMATS = (".jsonl", ".csv", ".html")


def scan(store: Store, embedders: Embedders, root: Path, out: Path, artist: str | None = None,
         progress: bool = False) -> str:
    """Scan `root` recursively into `out` (format from its suffix); returns a one-line summary."""
    fmt = out.suffix.lower()
    if fmt not in FORMATS:
        raise ValueError(f"--out must end in one of {', '.join(FORMATS)} (got {out.name})")
    scorer = Scorer(store, embedders)
    counts: Counter[str] = Counter()
    kept: list[dict] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out if fmt != ".html" else out.with_suffix(".jsonl"), "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS) if fmt == ".csv" else None
        if writer:
            writer.writeheader()
        for path, problem in tqdm(iter_image_paths([root]), unit="img", desc="scanning", disable=not progress):
            result = error_result(str(path), problem) if problem else scorer.score_path(path, artist)
            counts["error" if result["error"] else result["verdict"]["label"]] += 1
            if writer:
                writer.writerow(csv_row(result))
            else:
                f.write(json.dumps(result) + "\n")
            f.flush()
            if fmt == ".html":
                kept.append(result)
    summary = f"scanned {sum(counts.values())} files: " + ", ".join(
        f"{counts[k]} {k}" for k in ("copy", "derivative", "style_match", "unrelated", "error"))
    if fmt == ".html":
        write_html(kept, out, summary)
    return summary
