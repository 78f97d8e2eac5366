"""Training the chimera diffusion model on one synthetic artist's icons, seeded and resumable.

A thin loop of our own over denoising-diffusion-pytorch's `Unet` + `GaussianDiffusion` (rather
than its `Trainer`) so that every source of randomness is ours to seed and checkpoint: a run
stopped at any checkpoint and resumed ends with the same weights as one that never stopped.

Layout under `out/`:

    run.json              run manifest: id, preset + resolved config, dataset digest, code version, ...
    ckpt-<step>.pt        model, EMA, optimiser, step, RNG states, loss history, config
    latest.pt             byte copy of the newest ckpt-<step>.pt; training resumes from it
    samples-<step>.png    a cheap DDIM grid from the EMA model, every `sample_every` steps
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import torch
from PIL import Image
from torch.nn.utils import clip_grad_norm_
from torch.optim import Adam
from torchvision.utils import make_grid
from tqdm import tqdm

from generator.dataset import load_manifest
from generator.diffusion import Config, build, ddim, identity, load_checkpoint, make_ema, pick_device, resolve

RUN_FILE, LATEST = "run.json", "latest.pt"
TRAIN_LOCK = ".train.lock"  # held by the one process training in a run folder (`_only_trainer`)
LOSS_WINDOW = 20  # steps averaged for the progress bar and the first/last loss in run.json
CURVE_POINTS = 20


def training_set(data: Path, artist: str | None) -> tuple[str, list[Path]]:
    """The reference icons of `artist` (default: the manifest's first artist), sorted by path."""
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"no dataset directory at {data}")
    if not (data / "manifest.jsonl").is_file():
        raise ValueError(f"{data} has no manifest.jsonl: make it with generator.dataset.make_dataset")
    records = [r for r in load_manifest(data) if r.get("split", "reference") == "reference"]
    artists = list(dict.fromkeys(r["artist"] for r in records))
    if not artists:
        raise ValueError(f"{data}/manifest.jsonl lists no reference icons")
    artist = artists[0] if artist is None else artist
    if artist not in artists:
        raise ValueError(f"unknown artist {artist!r}; the dataset has {', '.join(artists)}")
    return artist, sorted(data / r["path"] for r in records if r["artist"] == artist)


def dataset_digest(files: list[Path]) -> str:
    """sha256 over the training files' bytes in sorted path order: what the run saw, not where."""
    h = hashlib.sha256()
    for path in sorted(files):
        if not path.is_file():
            raise ValueError(f"the dataset's manifest lists {path}, which is missing")
        h.update(path.read_bytes())
    return h.hexdigest()


def load_icons(files: list[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size) float in [0, 1]; icons of another size are resized with LANCZOS."""
    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.LANCZOS)
                arrays.append(np.asarray(img))
        except (OSError, SyntaxError, ValueError) as e:  # Pillow's messages do not name the file
            raise ValueError(f"training icon {path} is not a readable image ({e})") from None
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)


def code_version() -> str:
    """The git commit of this checkout (with "+changes" when its tracked files differ from it), else
    $CHIMERA_CODE_VERSION, else the installed package version.

    Only a checkout whose top is this package's own root counts: installed into a virtualenv inside
    a user's repository, the package would otherwise record that repository's commit. A copied tree
    without git metadata (a GPU box, say) that is not installed either says "unknown" rather than
    failing the run at its first checkpoint.
    """
    root = Path(__file__).resolve().parents[1]
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10)  # noqa: E731
    try:
        top, head = git("rev-parse", "--show-toplevel"), git("rev-parse", "HEAD")
        if top.returncode == 0 and head.returncode == 0 and Path(top.stdout.strip()).resolve() == root:
            changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
            return head.stdout.strip() + ("+changes" if changed else "")
    except (OSError, subprocess.SubprocessError):
        pass
    if os.environ.get("CHIMERA_CODE_VERSION"):
        return os.environ["CHIMERA_CODE_VERSION"]
    try:
        return f"chimera-provenance {metadata.version('chimera-provenance')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CUDA generators too


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain types, so checkpoints load with weights_only=True."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"]), p["gauss"]))


class Session:
    """One run's live state: model, EMA, optimiser and the icons it trains on; `step()` is one update."""

    def __init__(self, config: Config, icons: torch.Tensor, device: torch.device) -> None:
        self.config, self.device = config, device
        self.diffusion = build(config).to(device)
        self.ema = make_ema(self.diffusion, config).to(device)
        self.opt = Adam(self.diffusion.parameters(), lr=config.lr, betas=(0.9, 0.99))
        self.icons = icons.to(device)
        self.steps_done, self.seconds = 0, 0.0
        self.losses: list[float] = []

    def step(self) -> float:
        """Sample a batch (with replacement), one Adam step on the diffusion loss, clip, EMA update."""
        self.diffusion.train()
        batch = self.icons[torch.randint(len(self.icons), (self.config.batch_size,)).to(self.device)]
        if self.config.flip:
            flipped = torch.rand(len(batch), device=self.device) < 0.5
            batch = torch.where(flipped[:, None, None, None], batch.flip(-1), batch)
        loss = self.diffusion(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_(self.diffusion.parameters(), self.config.max_grad_norm)
        self.opt.step()
        self.ema.update()
        self.steps_done += 1
        self.losses.append(loss.item())
        return self.losses[-1]

    def state(self, run_id: str) -> dict[str, Any]:
        return {
            "format": 1, "run": run_id, "config": asdict(self.config), "step": self.steps_done,
            "seconds": self.seconds, "model": self.diffusion.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(), "rng": rng_state(), "losses": self.losses,
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        self.diffusion.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.steps_done, self.seconds, self.losses = ckpt["step"], ckpt["seconds"], list(ckpt["losses"])
        restore_rng(ckpt["rng"])


def run_id(preset: str, config: Config, digest: str, seed: int, artist: str) -> str:
    """Stable across resumes, different for any change that alters what is learned."""
    key = json.dumps({"config": identity(config), "dataset": digest, "seed": seed, "artist": artist}, sort_keys=True)
    return f"{preset}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def loss_summary(losses: list[float]) -> dict[str, Any]:
    if not losses:
        return {}
    w = min(LOSS_WINDOW, len(losses))
    chunk = math.ceil(len(losses) / CURVE_POINTS)
    curve = [[i + len(losses[i:i + chunk]), float(np.mean(losses[i:i + chunk]))] for i in range(0, len(losses), chunk)]
    return {
        "window": w, "first": float(np.mean(losses[:w])), "last": float(np.mean(losses[-w:])),
        "min": float(min(losses)), "curve": curve,  # [step at chunk end, mean loss over the chunk]
    }


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in out.glob("ckpt-*.pt") if p.stem.split("-")[1].isdigit())


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # Ctrl-C; a kill, a job runner's time-out; a closed terminal


@contextlib.contextmanager
def _stop_after_step() -> Iterator[threading.Event]:
    """An event a Ctrl-C, SIGTERM or SIGHUP sets while training: the loop saves a checkpoint after the
    step under way and stops, so the steps since the last checkpoint (minutes on a CPU) are kept and
    resume exactly. A second signal stops at once. Once the handlers before are back, a SIGTERM or
    SIGHUP is delivered to them as it came (the CLI's exit code says which; with no handler, it ends
    the process as before). A signal ignored when training starts (SIGINT in a background job, SIGHUP
    under nohup), or whose handler is not Python's default Ctrl-C one, is left alone. (Signals reach
    the main thread only; elsewhere nothing is caught.)"""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    caught: list[int] = []

    def interrupted(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        caught.append(signum)
        stop.set()

    previous = {}
    for sig in (getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)):
        handler = signal.getsignal(sig)
        if handler is not signal.SIG_IGN and (sig != signal.SIGINT or handler is signal.default_int_handler):
            previous[sig] = signal.signal(sig, interrupted)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught and caught[0] != signal.SIGINT:
            signal.raise_signal(caught[0])


def _recorded(out: Path) -> dict[str, Any] | None:
    """`out/run.json`, None without a readable one (then the checkpoints' run ids decide)."""
    try:
        record = json.loads((out / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run"), str) else None


def atomically(dst: Path, write: Callable[[Path], object]) -> None:
    """`write` the file at a temp path beside `dst`, then rename it there: a kill never leaves half a file.
    Synced to disk before and after the rename, so that after a power cut `dst` holds the old bytes or
    the new ones, never an empty file (an older checkpoint is deleted once a newer one is saved)."""
    tmp = dst.with_suffix(".tmp")
    write(tmp)
    _fsync(tmp)
    os.replace(tmp, dst)
    _fsync(dst.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(session: Session, out: Path, rid: str) -> Path:
    """ckpt-<step>.pt then latest.pt, each written whole or not at all (`atomically`)."""
    path = out / f"ckpt-{session.steps_done}.pt"
    atomically(path, lambda tmp: torch.save(session.state(rid), tmp))
    atomically(out / LATEST, lambda tmp: shutil.copyfile(path, tmp))
    keep = session.config.keep_checkpoints
    for step in checkpoint_steps(out)[:-keep] if keep else []:
        (out / f"ckpt-{step}.pt").unlink()
    return path


def save_grid(session: Session, path: Path, seed: int) -> None:
    """A progress picture from the EMA model; the same noise every time, so grids are comparable."""
    c = session.config
    images = ddim(session.ema.ema_model, c.grid, c.grid_sampling_steps, seed).cpu()
    grid = make_grid(images, nrow=math.ceil(math.sqrt(c.grid)), padding=1, pad_value=1.0)
    Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy()).save(path)


def manifest(session: Session, rid: str, preset: str, artist: str, data: Path, files: list[Path],
             digest: str, seed: int) -> dict[str, Any]:
    return {
        "run": rid, "preset": preset, "config": asdict(session.config), "artist": artist,
        "dataset": {"path": str(data), "digest": digest, "files": len(files)},
        "code": code_version(), "seed": seed, "device": str(session.device), "torch": torch.__version__,
        "library": {p: metadata.version(p) for p in ("denoising-diffusion-pytorch", "ema-pytorch")},
        "parameters": sum(p.numel() for p in session.diffusion.parameters()),
        "steps": session.steps_done, "checkpoint": f"ckpt-{session.steps_done}.pt",
        "train_seconds": round(session.seconds, 2),
        "seconds_per_step": round(session.seconds / session.steps_done, 4) if session.steps_done else None,
        "loss": loss_summary(session.losses),
    }


def train(
    data: Path,
    out: Path,
    preset: str,
    steps: int | None = None,
    device: str = "auto",
    seed: int = 0,
    artist: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train (or resume, if `out/latest.pt` exists) until `steps` total steps; returns the run manifest.

    `overrides` replace any `generator.diffusion.Config` knob of the preset. Resuming into a
    folder that holds a different run (other preset, data, seed or learning knobs) is refused.
    """
    config = resolve(preset, **overrides)
    config = config if steps is None else replace(config, steps=steps)
    if config.steps < 1:
        raise ValueError(f"steps must be >= 1, got {config.steps}")
    if not 0 <= seed < 2 ** 32:  # numpy's seeds; checked before `out` is made: a refused run leaves no folder
        raise ValueError(f"seed must be in 0..4294967295 (2**32 - 1), got {seed}")
    data, out = Path(data), Path(out)
    artist, files = training_set(data, artist)
    digest, dev = dataset_digest(files), pick_device(device)
    rid = run_id(preset, config, digest, seed, artist)
    icons = load_icons(files, config.image_size)  # a damaged icon is refused before `out` is made
    out.mkdir(parents=True, exist_ok=True)
    with _only_trainer(out):
        return _train_in(out, config, icons, dev, seed, rid, preset, artist, data, files, digest)


@contextlib.contextmanager
def _only_trainer(out: Path) -> Iterator[None]:
    """Hold the run folder's lock: two processes training into one folder would each resume from the
    same checkpoint and overwrite each other's latest.pt and run.json."""
    lock = filelock.FileLock(str(out / TRAIN_LOCK))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise ValueError(f"another process is training in {out}: let it finish (or stop it), then resume") from None
    try:
        yield
    finally:
        lock.release()


def _train_in(out: Path, config: Config, icons: torch.Tensor, dev: torch.device, seed: int, rid: str, preset: str,
              artist: str, data: Path, files: list[Path], digest: str) -> dict[str, Any]:
    """`train` in a run folder it holds alone (`_only_trainer`)."""
    seed_everything(seed)
    session = Session(config, icons, dev)
    def same_run(held: str) -> None:
        if held != rid:
            raise ValueError(f"{out} holds run {held}, not {rid}: use another output folder, "
                             "or the same preset, data, seed, artist and knobs to resume it")

    recorded = _recorded(out)
    if recorded:  # latest.pt deleted, or only checkpoints left: still that run's folder
        same_run(recorded["run"])
    resume = out / LATEST if (out / LATEST).exists() else \
        next((out / f"ckpt-{s}.pt" for s in reversed(checkpoint_steps(out))), None)
    if resume is not None:
        ckpt = load_checkpoint(resume, torch.device("cpu"))
        same_run(ckpt["run"])
        session.load(ckpt)
        if resume != out / LATEST:  # sampling and analysis read latest.pt
            atomically(out / LATEST, lambda tmp: shutil.copyfile(resume, tmp))

    def write_manifest() -> None:  # whole or not at all: a kill mid-write must not cost the run its folder
        record = manifest(session, rid, preset, artist, data, files, digest, seed)
        atomically(out / RUN_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))

    start = session.steps_done
    if start > config.steps:  # resuming with fewer steps than done: the run stays as it is
        print(f"chimera: {out} is already at step {start}, past the {config.steps} asked for: nothing trained",
              file=sys.stderr)
    with tqdm(total=config.steps, initial=start, desc=rid, mininterval=1.0,
              disable=start >= config.steps or not sys.stderr.isatty()) as bar, \
            _stop_after_step() as stop:
        while session.steps_done < config.steps:
            t0 = time.perf_counter()
            session.step()
            session.seconds += time.perf_counter() - t0
            bar.update()
            bar.set_postfix(loss=f"{np.mean(session.losses[-LOSS_WINDOW:]):.4f}", refresh=False)
            done = session.steps_done
            if done % config.sample_every == 0 or done == config.steps:
                save_grid(session, out / f"samples-{done}.png", seed)
            if done % config.checkpoint_every == 0 or done == config.steps or stop.is_set():
                save_checkpoint(session, out, rid)
                write_manifest()  # after every checkpoint, so a killed run still describes its latest.pt
            if stop.is_set() and done < config.steps:  # (on the last step the run is simply complete)
                bar.close()
                print(f"chimera: saved step {done} in {out}; the same command resumes it", file=sys.stderr)
                raise KeyboardInterrupt
    if (_recorded(out) or {}).get("steps") != session.steps_done:  # deleted, damaged, or behind latest.pt
        write_manifest()
    return json.loads((out / RUN_FILE).read_text())
