"""What one `chimera score` costs from a cold process: start-up against the old path, in one run.

    .venv/bin/python benchmarks/startup_bench.py [--rounds 5] [--per-artist 60]

World: 3 synthetic artists (the generator), `--per-artist` reference icons each registered in a
fresh store with `chimera index add`. Each row runs `chimera --store STORE score --json ICON` in a
new process, `--rounds` times, the rows taking turns (medians reported; this VM's noise is large).
Every row has the hashing colour tables in its cache folder already (built once before timing).
  open_clip imported, calibration fitted   the path before 8e51c9f and the calibration cache (the
                                           baseline): the HF hub cache holds some OpenCLIP checkpoint
                                           (another model's), so open_clip and torch are imported to
                                           look for the default weights; a fresh calibration folder
  calibration fitted                      an empty HF hub cache (CLIP known unavailable without the
                                           import); a fresh calibration folder: the first score of a
                                           store state
  calibration read from the cache         as above, the calibration kept by an earlier score
  --no-clip, calibration read              CLIP off by the flag
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from detect_eval import machine

from generator.dataset import make_dataset


def chimera(*args: str, env: dict[str, str]) -> float:
    """Seconds one `chimera` process takes, start to exit (its output checked, then dropped)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"chimera {' '.join(args)} failed: {done.stderr.strip()}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-artist", type=int, default=60)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    try:
        make_dataset(tmp / "data", artists=3, per_artist=args.per_artist, size=64, seed=0, holdout=8)
        base = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HOME": str(tmp / "hf")}
        tables = {**base, "CHIMERA_CACHE_DIR": str(tmp / "tables")}
        store = str(tmp / "store")
        for artist in sorted(p.name for p in (tmp / "data").iterdir() if p.is_dir()):
            chimera("--store", store, "--no-clip", "index", "add", "--artist", artist,
                    str(tmp / "data" / artist / "icons"), env=tables)  # builds the colour tables too
        query = str(sorted((tmp / "data" / "artist_00" / "icons").glob("*.png"))[0])
        other = tmp / "hub-other" / "models--someone--other-clip" / "snapshots" / "0"
        other.mkdir(parents=True)
        (other / "open_clip_model.safetensors").write_bytes(b"another model's weights")

        def fresh_cache() -> str:
            """A cache folder holding the colour tables only: the calibration is fitted."""
            folder = Path(tempfile.mkdtemp(dir=tmp))
            for f in (tmp / "tables").glob("colour-tables-*"):
                shutil.copy(f, folder)
            return str(folder)

        kept = fresh_cache()
        chimera("--store", store, "score", "--json", query,
                env={**base, "CHIMERA_CACHE_DIR": kept, "HF_HUB_CACHE": str(tmp / "hub-empty")})
        rows = {
            "open_clip imported, calibration fitted":
                lambda: {**base, "CHIMERA_CACHE_DIR": fresh_cache(), "HF_HUB_CACHE": str(tmp / "hub-other")},
            "calibration fitted":
                lambda: {**base, "CHIMERA_CACHE_DIR": fresh_cache(), "HF_HUB_CACHE": str(tmp / "hub-empty")},
            "calibration read from the cache":
                lambda: {**base, "CHIMERA_CACHE_DIR": kept, "HF_HUB_CACHE": str(tmp / "hub-empty")},
        }
        secs: dict[str, list[float]] = {name: [] for name in [*rows, "--no-clip, calibration read"]}
        for r in range(args.rounds):
            order = list(secs) if r % 2 == 0 else list(reversed(secs))
            for name in order:
                if name.startswith("--no-clip"):
                    secs[name].append(chimera("--store", store, "--no-clip", "score", "--json", query,
                                              env={**base, "CHIMERA_CACHE_DIR": kept}))
                else:
                    secs[name].append(chimera("--store", store, "score", "--json", query, env=rows[name]()))
        print(f"\n{machine()}; store of {3 * args.per_artist} works; {args.rounds} rounds\n")
        print("| `chimera score`, one icon | median s | min s | max s | vs baseline |")
        print("|---|---:|---:|---:|---:|")
        baseline = next(iter(secs))
        for name, s in secs.items():
            m = statistics.median(s)
            versus = "baseline" if name == baseline else f"{statistics.median(secs[baseline]) / m:.1f}x faster"
            print(f"| {name} | {m:.2f} | {min(s):.2f} | {max(s):.2f} | {versus} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
