"""The `chimera` command line. Its commands and JSON shapes are a fixed contract.

User errors print one line, `chimera: error: ...`, on stderr and exit 2; a run
that completed with per-file failures exits 1 after doing all the good work.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Callable

from detector.images import for_terminal, pixel_budget, shown
from index.names import NAME_RULE, valid_name
from index.store import NoStore, Store, StoreError

MAX_ICON = 1024  # largest --size of `dataset make`: every part is drawn at full size in memory


class UserError(Exception):
    """Shown as one line; no traceback."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        print(f"chimera: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _open(args: argparse.Namespace, create: bool = False, read_only: bool = False) -> Store:
    return Store.open(args.store, create=create, read_only=read_only)


def _path(text: str) -> str:
    """A path argument: an empty one is refused, not read as the working folder (`Path("")` is "."),
    so an unset variable ("$DIR") cannot scan, or register, everything under it."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (an unset variable?)")
    return text


def _embedders(args: argparse.Namespace, quiet: bool = False):
    from detector.embedders import Embedders
    return Embedders.load(args.clip_model, args.clip_weights, use_clip=not args.no_clip, quiet=quiet)


# ------------------------------------------------------------------ index
def _holds_artist(args: argparse.Namespace, name: str) -> bool:
    """Whether the store holds an artist of this name (no store holds none), read before anything is
    loaded or made: a refused add must leave no new, empty store behind."""
    try:
        with _open(args, read_only=True) as store:
            return store.has_artist(name)
    except NoStore:
        return False


def cmd_index_add(args: argparse.Namespace) -> int:
    from itertools import chain

    from detector.images import IMAGE_SUFFIXES, ImageError, iter_image_paths
    from index.names import addable_name
    from service.ingest import AddReport, add_images, load_paths
    if not addable_name(args.artist, partial(_holds_artist, args)):  # a new name must not pass for another
        raise UserError(f"--artist {args.artist!r} is not an artist name: {NAME_RULE}")
    missing: list[tuple[str, str]] = []
    paths = [Path(p) for p in args.paths]
    total = sum(1 for _ in iter_image_paths(paths))
    if total == 0:
        print(for_terminal(f"chimera: note: no image files in {', '.join(map(shown, paths))} (looked for "
                           f"{', '.join(sorted(IMAGE_SUFFIXES))})"), file=sys.stderr)
    embedders = _embedders(args)
    items = iter(load_paths(paths, missing))
    first: list = []  # up to the first usable image: a new store is made only when there is one to add
    usable = (Path(args.store) / "catalogue.sqlite").exists()
    if not usable:
        for item in items:
            first.append(item)
            if not isinstance(item, ImageError):
                usable = True
                break
    if not usable:  # only files that cannot be read: said, and no empty store is left behind
        report = AddReport(failed=[(e.source, e.reason) for e in first])
    else:
        with _open(args, create=True) as store:  # (an artist removed since: refused under the write lock)
            report = add_images(store, embedders, args.artist, chain(first, items), signature=args.signature,
                                progress=total > 20 and sys.stderr.isatty(), total=total,
                                existing_only=not valid_name(args.artist))
    report.failed[:0] = missing
    for source, why in report.failed:
        print(for_terminal(f"chimera: failed: {source}: {why}"), file=sys.stderr)
    for source, why in report.skipped:
        print(for_terminal(f"chimera: skipped: {source}: {why}"), file=sys.stderr)
    what = "signatures" if args.signature else "works"
    print(f"{args.artist}: {report.summary()} ({what})")
    if report.warning:  # added, but the indexes were not saved: said, with exit 2, as before the report was kept
        raise UserError(report.warning)
    return 1 if report.failed else 0


def cmd_index_list(args: argparse.Namespace) -> int:
    try:
        store = _open(args)
    except NoStore:  # (a store there but unreadable, or a file, is an error: never "no artists")
        if args.artist is not None:
            raise UserError(f"no artist named {args.artist!r}: no store at {args.store}") from None
        # nothing registered yet, which is no error; but a mistyped --store must not read as an empty store
        print(for_terminal(f"chimera: note: no store at {args.store} (`chimera index add` makes one)"), file=sys.stderr)
        data: dict[str, Any] = {"artists": [], "generated": 0}
    else:
        with store:
            if args.artist is not None:
                if not store.has_artist(args.artist):
                    raise UserError(f"no artist named {args.artist!r} in the store")
                works, samples = store.works_of(args.artist), store.signatures_of(args.artist)
                if args.json:
                    print(json.dumps({"artist": args.artist, "works": works, "signatures": samples}))
                    return 0
                for what, rows in (("work", works), ("signature", samples)):
                    for w in rows:
                        print(f"{what:<9} {w['id']:>7}  {w['width']}x{w['height']}  {for_terminal(w['source'])}")
                return 0
            data = {"artists": store.artists(), "generated": store.generated_count()}
    if args.json:
        print(json.dumps(data))
        return 0
    if not data["artists"]:
        print(f"no artists in {args.store or os.environ.get('CHIMERA_STORE', 'chimera-store')}")
    for a in data["artists"]:
        print(f"{a['name']:<24} {a['works']:>7} works {a['signatures']:>4} signatures")
    print(f"generated outputs: {data['generated']}")
    return 0


def cmd_index_remove(args: argparse.Namespace) -> int:
    with _open(args) as store, store.writer() as w:
        if args.work is not None:
            w.remove_work(args.artist, args.work)
            print(f"removed work {args.work} of {args.artist}")
        elif args.signature is not None:
            w.remove_signature(args.artist, args.signature)
            print(f"removed signature sample {args.signature} of {args.artist}")
        else:
            counts = w.remove_artist(args.artist)
            print(f"removed {args.artist}: {counts['works']} works, {counts['signatures']} signatures")
    return 0


def cmd_index_rebuild(args: argparse.Namespace) -> int:
    with _open(args) as store, store.writer() as w:
        for note in w.rebuild(args.index_factory):
            print(f"chimera: note: {note}", file=sys.stderr)
        kinds = {k: store.conn.execute("SELECT COUNT(*) FROM vectors WHERE kind=?", (k,)).fetchone()[0]
                 for k in store.specs()}
    print("rebuilt " + ", ".join(f"{k} ({n} vectors)" for k, n in sorted(kinds.items())))
    return 0


def cmd_index_check(args: argparse.Namespace) -> int:
    with _open(args) as store:
        problems = store.check()
    for p in problems:
        print(f"chimera: problem: {p}", file=sys.stderr)
    print("ok" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


# ------------------------------------------------------------------ detect
def cmd_score(args: argparse.Namespace) -> int:
    from detector.images import ImageError, load
    from detector.score import Scorer
    try:
        img = load(args.image)
    except ImageError as e:
        raise UserError(str(e)) from None
    with _open(args) as store:
        try:
            result = Scorer(store, _embedders(args)).score(img, args.artist)
        except ValueError as e:
            raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from service.report import describe
        print(describe(result))
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from collections import Counter

    from service.scan import scan
    root = Path(args.dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")
    counts: Counter[str] = Counter()
    with _open(args, read_only=True) as store:
        try:
            summary = scan(store, _embedders(args), root, Path(args.out), artist=args.artist,
                           progress=sys.stderr.isatty(), workers=args.workers, resume=args.resume,
                           clip={"clip_model": args.clip_model, "clip_weights": args.clip_weights,
                                 "use_clip": not args.no_clip}, engine=args.engine, ray_address=args.ray_address,
                           counts=counts)
        except (ValueError, RuntimeError) as e:  # bad --out/--engine/--artist, or the engine could not start
            raise UserError(str(e)) from None
        except OSError as e:  # --out names a folder, or a folder under a file
            raise UserError(f"cannot write {args.out}: {e.strerror or e}") from None
    print(summary)
    return 1 if counts["error"] else 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from detector.clip import ClipUnavailable, chosen, fetch
    model, weights = chosen(args.clip_model, args.clip_weights)  # the flags, else CHIMERA_CLIP_*, as scoring
    logging.disable(logging.ERROR)  # the hub's retries and open_clip's own error: a failure is said once, below
    try:
        path = fetch(model, weights)
    except (ClipUnavailable, OSError, RuntimeError) as e:
        raise UserError(f"cannot fetch CLIP weights: {str(e).splitlines()[0]}") from None
    finally:
        logging.disable(logging.NOTSET)
    print(f"{path}: a local checkpoint, nothing to fetch" if Path(weights).is_file() else f"cached at {path}")
    return 0


@contextlib.contextmanager
def _fresh(out: Path, what: str) -> Iterator[None]:
    """Refuse an --out folder that holds anything: writing over an earlier run's files replaces some and
    leaves others beside them, unlisted, and a store entry made from one would name another picture.
    A command that fails or is interrupted takes back what it wrote, so the same command can run again."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: write {what} to a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: write {what} to a new or empty folder")
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        for path in out.iterdir() if out.is_dir() else ():  # an empty folder given: empty it again
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise


def cmd_dataset_make(args: argparse.Namespace) -> int:
    from generator.dataset import make_dataset
    for flag, value, least in (("--artists", args.artists, 1), ("--per-artist", args.per_artist, 1),
                               ("--size", args.size, 20), ("--holdout", args.holdout, 0), ("--seed", args.seed, 0)):
        if value < least:  # parts cannot be drawn on a 16 px canvas; 20 px draws (small accessories may vanish)
            raise UserError(f"{flag} must be at least {least} (got {value})")
    if args.size > MAX_ICON:
        raise UserError(f"--size must be at most {MAX_ICON} (got {args.size}): icons, not posters")
    try:
        with _fresh(Path(args.out), "a dataset"):  # a dataset made over another leaves the other's icons behind
            rows = make_dataset(Path(args.out), artists=args.artists, per_artist=args.per_artist, size=args.size,
                                seed=args.seed, signed=args.signed, holdout=args.holdout)
    except ValueError as e:  # more icons than the parts can make
        raise UserError(str(e)) from None
    print(f"wrote {len(rows)} icons of {args.artists} artists to {args.out} (manifest.jsonl)")
    return 0


def cmd_dataset_chimeras(args: argparse.Namespace) -> int:
    from generator.chimeras import make_chimeras
    if not (Path(args.data) / "manifest.jsonl").exists():
        raise UserError(f"{args.data} is not a dataset (no manifest.jsonl; make one with `chimera dataset make`)")
    try:
        with _fresh(Path(args.out), "chimeras"):
            rows = make_chimeras(Path(args.data), Path(args.out), n=args.n, seed=args.seed)
    except ValueError as e:  # too few icons, a bad --n or --seed, a damaged manifest
        raise UserError(str(e)) from None
    print(f"wrote {len(rows)} chimeras with ground truth to {args.out} (chimeras.jsonl)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from generator.train import train
    try:
        run = train(Path(args.data), Path(args.out), args.preset, steps=args.steps, device=args.device,
                    seed=args.seed, artist=args.artist)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"trained {args.preset} to step {run['steps']}: {args.out} (run.json, checkpoints, sample grids)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from generator.sample import sample
    embedders = _embedders(args) if args.register else None
    if embedders is not None:
        _can_register(args, embedders)  # before sampling (hours on a GPU), not after it
    try:
        with _fresh(Path(args.out), "samples"):
            records = sample(Path(args.run), args.n, Path(args.out), steps=args.steps, seed=args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {len(records)} samples with provenance to {args.out} (samples.jsonl)")
    if embedders is None:
        return 0
    from service.ingest import add_images, load_paths
    paths = {str(Path(args.out) / r["path"]): r for r in records}
    generated = {shown(p): {"run": r["run"], "checkpoint": r["checkpoint"], "seed": r["seed"], "index": r["index"]}
                 for p, r in paths.items()}  # keyed as images name their source
    missing: list[tuple[str, str]] = []
    with _open(args, create=True) as store:
        report = add_images(store, embedders, None, load_paths([Path(p) for p in paths], missing),
                            generated=generated)
    for source, why in [*missing, *report.failed]:
        print(for_terminal(f"chimera: failed: {source}: {why}"), file=sys.stderr)
    for source, why in report.skipped:
        print(for_terminal(f"chimera: skipped: {source}: {why}"), file=sys.stderr)
    print(f"registered as generated outputs: {report.summary()}")
    if report.warning:
        raise UserError(report.warning)
    return 0


def _can_register(args: argparse.Namespace, embedders) -> None:
    """Refuse (UserError, StoreError) a --store that could not take the samples: a file, one that cannot be
    written here, one whose works were described by other embedders, or a new one where no folder can be
    made. Nothing is created: the store is made when the samples are added."""
    root = Path(args.store)
    try:
        store = _open(args)
    except NoStore:  # a new store, made when the samples are added: somewhere a folder can be made
        near = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())
        if not near.is_dir() or not os.access(near, os.W_OK):
            raise UserError(f"cannot register samples: no store can be made at {root} ({near} cannot be written)")
        return
    with store:
        if store.read_only:
            raise UserError(f"cannot register samples: the store at {root} cannot be written here")
        store.check_embedders([s for s in embedders.specs() if s.owner != "signature"])


def cmd_analyze(args: argparse.Namespace) -> int:
    from generator.analyze import analyze
    try:
        with _fresh(Path(args.out), "a report"):
            metrics = analyze(Path(args.run), Path(args.data), Path(args.out),
                              samples=Path(args.samples) if args.samples else None, n=args.n, steps=args.steps)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(json.dumps(metrics, indent=2))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from service.app import serve
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535 (got {args.port})")
    try:
        serve(args.host, args.port, args.store, threads=args.threads, embedders=_embedders(args))
    except OSError as e:  # the port is taken, or the host is not this machine's
        raise UserError(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}") from None
    except ValueError as e:  # a CHIMERA_* setting that is not a positive number (service.app.settings)
        raise UserError(str(e)) from None
    # waitress's loop returns only when stopped, from Ctrl-C and SIGTERM alike: said, and exit 128 + n
    raise Terminated(_received[-1]) if _received else KeyboardInterrupt()


def cmd_demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo
    try:
        return run_demo(Path(args.out), clip=not args.no_clip)
    except ValueError as e:
        raise UserError(str(e)) from None


# ------------------------------------------------------------------ parser
def _global_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """The store and CLIP options every command reads; without `defaults`, unset ones stay unset."""
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS
    p.add_argument("--store", type=_path, default=default(os.environ.get("CHIMERA_STORE", "chimera-store")),
                   help="store directory (env CHIMERA_STORE; default ./chimera-store)")
    p.add_argument("--clip-model", default=default(None),
                   help="open_clip model name or config JSON (env CHIMERA_CLIP_MODEL)")
    p.add_argument("--clip-weights", default=default(None),
                   help="hub tag or local checkpoint path (env CHIMERA_CLIP_WEIGHTS; default laion2b_s34b_b79k)")
    p.add_argument("--no-clip", action="store_true", default=default(False),
                   help="do not use CLIP even if weights are present")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="chimera", description="Provenance and misuse detection for illustrations.")
    _global_options(p, defaults=True)
    # the same options after a command (`chimera score x.png --store S`): there they only override
    # what was given before it, so their defaults are left to the top level
    common = Parser(add_help=False)
    _global_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def cmd(parent, name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(fn=fn)
        return sp

    idx = sub.add_parser("index", help="manage the reference store", description="Manage the reference store.")
    isub = idx.add_subparsers(dest="index_command", required=True, parser_class=Parser)
    a = cmd(isub, "add", cmd_index_add, "add images or folders (recursive) as works or signature samples of an artist")
    a.add_argument("--artist", required=True)
    a.add_argument("--signature", action="store_true", help="the images are signature samples")
    a.add_argument("paths", nargs="+", metavar="PATH", type=_path)
    li = cmd(isub, "list", cmd_index_list, "list artists with their counts, or one artist's works")
    li.add_argument("--artist", help="list this artist's works and signature samples: id (for `index remove "
                                     "--work` or `--signature`), size, source")
    li.add_argument("--json", action="store_true")
    r = cmd(isub, "remove", cmd_index_remove, "remove an artist, or one of its works or signature samples")
    r.add_argument("--artist", required=True)
    one = r.add_mutually_exclusive_group()
    one.add_argument("--work", type=int)
    one.add_argument("--signature", type=int, metavar="ID", help="a signature sample's id (`index list --artist`)")
    rb = cmd(isub, "rebuild", cmd_index_rebuild, "rebuild every FAISS index from the catalogue")
    rb.add_argument("--index-factory", help="FAISS factory for float kinds, optionally ';BINARY' for hashes "
                                            "(e.g. 'IVF1024,Flat', 'HNSW32', 'IVF256,Flat;BIVF256')")
    cmd(isub, "check", cmd_index_check, "check that the store agrees with itself")

    s = cmd(sub, "score", cmd_score, "score one image against the store")
    s.add_argument("image", type=_path)
    s.add_argument("--artist")
    s.add_argument("--json", action="store_true")
    sc = cmd(sub, "scan", cmd_scan, "score every image under a folder")
    sc.add_argument("dir", type=_path)
    sc.add_argument("--artist")
    sc.add_argument("--out", required=True, type=_path, help="result file: .jsonl, .csv or .html (flagged images; every record in FILE.html.jsonl)")
    sc.add_argument("--workers", type=int, help="scoring processes, or Ray actors with --engine ray"
                    " (default: 1 process; with Ray, one actor per CPU less one)")
    sc.add_argument("--resume", action="store_true", help="skip files already in --out (the same path with the same sha256; run it from the same folder)")
    sc.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: this machine's processes; ray: Ray Data, on a local Ray or --ray-address")
    sc.add_argument("--ray-address", help="Ray cluster to run on, e.g. ray://head:10001 or auto"
                    " (default: $RAY_ADDRESS, else a local Ray started for the scan)")

    m = sub.add_parser("models", help="model weights", description="Model weights.")
    msub = m.add_subparsers(dest="models_command", required=True, parser_class=Parser)
    cmd(msub, "fetch", cmd_models_fetch, "download the CLIP weights into the local cache (needs the hub)")

    ds = sub.add_parser("dataset", help="synthetic layered artists", description="Synthetic layered artists.")
    dsub = ds.add_subparsers(dest="dataset_command", required=True, parser_class=Parser)
    mk = cmd(dsub, "make", cmd_dataset_make, "draw procedural artists as layered face icons (Cartesian product of parts)")
    mk.add_argument("out", type=_path)
    mk.add_argument("--artists", type=int, default=4)
    mk.add_argument("--per-artist", type=int, default=200)
    mk.add_argument("--size", type=int, default=64)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--holdout", type=int, default=0, help="also draw this many held-out originals per artist")
    mk.add_argument("--signed", action="store_true", help="sign every icon in its bottom-right corner")
    ch = cmd(dsub, "chimeras", cmd_dataset_chimeras, "recombine a dataset's icons, with the source of every part")
    ch.add_argument("data", type=_path)
    ch.add_argument("out", type=_path)
    ch.add_argument("--n", type=int, default=40)
    ch.add_argument("--seed", type=int, default=0)

    tr = cmd(sub, "train", cmd_train, "train the chimera diffusion setup (denoising-diffusion-pytorch) on a dataset")
    tr.add_argument("data", type=_path)
    tr.add_argument("--preset", required=True, help="seed, seed-baseline (GPU scale), small, small-baseline (CPU)")
    tr.add_argument("--out", required=True, type=_path, help="run directory (resumes when it holds a run)")
    tr.add_argument("--steps", type=int)
    tr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--artist", help="artist of the dataset to train on (default: the first)")
    sa = cmd(sub, "sample", cmd_sample, "sample a trained run (DDIM) into PNGs carrying provenance")
    sa.add_argument("run", type=_path)
    sa.add_argument("--n", type=int, required=True)
    sa.add_argument("--out", required=True, type=_path)
    sa.add_argument("--steps", type=int, help="DDIM steps")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--register", action="store_true", help="store the samples as generated outputs")
    an = cmd(sub, "analyze", cmd_analyze, "measure memorisation, part recognisability, layout scramble, novelty")
    an.add_argument("run", type=_path)
    an.add_argument("--data", required=True, type=_path)
    an.add_argument("--out", required=True, type=_path)
    an.add_argument("--samples", type=_path, help="judge the samples in this folder (`chimera sample --out`) instead of drawing")
    an.add_argument("--n", type=int, default=64, help="samples judged (drawn into OUT/samples without --samples)")
    an.add_argument("--steps", type=int, help="DDIM steps of the samples drawn (default: the run's)")

    sv = cmd(sub, "serve", cmd_serve, "serve the HTTP API and web page (waitress)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--threads", type=int, default=8)

    d = cmd(sub, "demo", cmd_demo, "make a synthetic reference set, index it, score copies, a collage, a chimera, an original and a forged signature")
    d.add_argument("--out", default="chimera-demo", type=_path)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command is, so that its clean-up runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []  # the stop signals the running command got (`_stop_signals`)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a `kill`, a job runner's time-out, a closed terminal) stop a command as Ctrl-C
    does: killed outright, a scan left its worker processes behind, idle for ever and holding its output
    pipes, and a command writing a folder left it half written. Each is noted in `_received`: a server's
    loop returns quietly from them (`cmd_serve`). A signal ignored when the command started (`nohup`
    ignores SIGHUP) stays ignored. Ctrl-C is Python's own KeyboardInterrupt, which training takes over
    to finish its step. The handlers before are put back after (a caller such as a test runner keeps
    its own); only the main thread may set them."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        _received.append(signum)
        raise Terminated(signum)
    wanted = [sig for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig is not None
              and signal.getsignal(sig) is not signal.SIG_IGN]
    before = {sig: signal.signal(sig, stop) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _as_shown(e: UnicodeError) -> tuple[str, int]:
    """The codec error handler `SHOWN`: a file name's undecodable bytes (lone surrogates) as `shown` writes
    them, any other character the output's encoding lacks as Python's backslashreplace does (\\U0001f3a8)."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else
                   c.encode("ascii", "backslashreplace").decode() for c in e.object[e.start:e.end]), e.end


SHOWN = "chimera-shown"
codecs.register_error(SHOWN, _as_shown)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a path in bytes that are not UTF-8 is printed as records show
        if hasattr(stream, "reconfigure"):  # it (\xNN, `shown`), not a UnicodeEncodeError after the work is done
            stream.reconfigure(errors=SHOWN)
    try:
        try:
            pixel_budget()  # settings read from the environment: a bad one is a user error before any work
        except ValueError as e:
            raise UserError(str(e)) from None
        artist = getattr(args, "artist", None)
        if artist is not None and not valid_name(artist, new=False):  # no artist is named so (the API's rule:
            raise UserError(f"--artist {artist!r} is not an artist name: {NAME_RULE}")  # not UTF-8, a '/' ...)
        with _stop_signals():
            code = args.fn(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not in Python's flush at exit
        return code
    except (UserError, StoreError) as e:
        print(for_terminal(f"chimera: error: {e}"), file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): nothing is wrong, and nothing more can be said
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's flush at exit would fail again)
        return 141  # as a program killed by SIGPIPE, so `set -o pipefail` sees it
    except OSError as e:  # a folder that is a file, a full disk, no permission: the system's one line
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(for_terminal(f"chimera: error: {e.strerror or e}{where}"), file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:  # a damaged page met after the store opened (`index check` lists it)
        print(f"chimera: error: the store's catalogue cannot be read ({e}); restore catalogue.sqlite from a "
              "backup", file=sys.stderr)
        return 2
    except Terminated as e:
        print(f"chimera: stopped by {signal.Signals(e.signum).name}{_after_stop(args)}", file=sys.stderr)
        return 128 + e.signum  # as a program the signal killed
    except KeyboardInterrupt:
        print(f"chimera: interrupted{_after_stop(args)}", file=sys.stderr)
        return 130


def _after_stop(args: argparse.Namespace) -> str:
    """What a stopped command kept, and how to finish its work, for the commands that keep part of it."""
    if getattr(args, "fn", None) is cmd_index_add:
        return ("; what was added before is kept: the same command adds the rest (skipping the files "
                "already in the store)")
    if getattr(args, "fn", None) is cmd_scan:
        return "; the records written are kept: add --resume to the same command to score the rest"
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
