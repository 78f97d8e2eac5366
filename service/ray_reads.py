"""The read tasks of `chimera scan --engine ray` (service/scan_ray.py).

Kept apart, importing nothing of the scoring stack (only detector.images, which needs Pillow):
Ray imports a task's module in every worker process that runs it, and importing torch, OpenCV
and FAISS there cost a fresh local Ray 18 s before the first file was hashed, against 7 s for
this module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from detector.images import read_bytes


def digest(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each file's sha256, "" when it cannot be read (`read` reads it again and records why).
    Files are read at `file` (absolute: a task may run on another node, in another folder) and
    recorded under `path`, as the scan names them."""
    shas = []
    for file, problem in zip(batch["file"], batch["problem"]):
        data, _ = (None, problem) if problem else read_bytes(Path(file))
        shas.append("" if data is None else hashlib.sha256(data).hexdigest())
    return {**batch, "sha256": np.array(shas, dtype=object)}


def read(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each file's bytes: b"" with the reason in `problem` when it cannot be read (`n`, the file's number
    in the scan's chunk, passed on: two files' paths may be shown alike)."""
    data, problems = [], []
    for file, problem in zip(batch["file"], batch["problem"]):
        blob, why = (None, problem) if problem else read_bytes(Path(file))
        data.append(blob or b"")
        problems.append(why or "")
    return {"n": batch["n"], "path": batch["path"], "problem": np.array(problems, dtype=object),
            "data": np.array(data, dtype=object)}
