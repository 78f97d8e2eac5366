"""Load on the real HTTP server over loopback: throughput and latency, also while works are added.

    .venv/bin/python benchmarks/service_load.py [--clients 4] [--seconds 20]

Baseline in the same run: the same scoring called directly in one process (no
HTTP, no server), so the table shows what the server layer costs. Traffic goes to
127.0.0.1 only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from PIL import Image

from detector import augment
from detector.embedders import Embedders
from detector.images import decode, load
from detector.score import Scorer
from generator.dataset import make_dataset
from index.store import Store
from service.ingest import add_images

TOKEN = "bench-token"


def multipart(field: str, name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, field: str, name: str, data: bytes, token: str | None = None) -> int:
    body, ctype = multipart(field, name, data)
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=60) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def clients(url: str, queries: list[bytes], n: int, seconds: float, max_requests: int = 100_000):
    """n threads scoring random queries for `seconds`; (latencies, errors, wall)."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.time() + seconds

    def run(seed: int) -> None:
        rng = random.Random(seed)
        while time.time() < stop and len(lat) < max_requests:
            t = time.perf_counter()
            status = post(url + "/v1/score", "image", "q.png", rng.choice(queries))
            with lock:
                lat.append(time.perf_counter() - t)
                errors[0] += status != 200
    t0 = time.time()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, errors[0], time.time() - t0


def row(name: str, n: int, lat: list[float], errors: int, wall: float, extra: str = "") -> str:
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0]] * 99
    return (f"| {name} | {n} | {len(lat)} | {len(lat) / wall:.1f} | {1000 * statistics.median(lat):.0f} | "
            f"{1000 * q[98]:.0f} | {errors} | {extra} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--works", type=int, default=60, help="registered icons per artist (2 artists)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chimera-load-"))
    rows = make_dataset(tmp / "data", artists=2, per_artist=args.works + 40, size=64, seed=7, holdout=10)
    refs = [tmp / "data" / r["path"] for r in rows if r["split"] == "reference"]
    registered, spare = refs[:args.works] + refs[args.works + 40:2 * args.works + 40], \
        refs[args.works:args.works + 40] + refs[2 * args.works + 40:]
    emb = Embedders(None, "off")
    store = Store.open(tmp / "store", create=True)
    for name in ("artist_00", "artist_01"):
        add_images(store, emb, name, [load(x) for x in registered if x.parent.parent.name == name])
    rng = random.Random(0)
    qimgs = [augment.copy_edits(load(x).image, rng)["jpeg"] for x in rng.sample(registered, 10)]
    qimgs += [load(tmp / "data" / r["path"]).image for r in rows if r["split"] == "heldout"][:10]
    queries = [png_bytes(im) for im in qimgs]

    scorer = Scorer(store, emb)  # baseline: direct calls, one thread, same queries
    scorer.score(decode(queries[0], "warm"))
    lat, t0 = [], time.time()
    while time.time() - t0 < args.seconds / 2:
        t = time.perf_counter()
        scorer.score(decode(queries[len(lat) % len(queries)], "q"))
        lat.append(time.perf_counter() - t)
    base_wall = time.time() - t0
    store.close()

    port = (lambda s: (s.bind(("127.0.0.1", 0)), s.getsockname()[1], s.close())[1])(socket.socket())
    env = {**os.environ, "CHIMERA_API_TOKENS": TOKEN}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "--store", str(tmp / "store"), "--no-clip",
                               "serve", "--port", str(port), "--threads", str(max(4, args.clients))], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        clients(url, queries, 1, 2)  # warm every server thread's caches
        lat_a, err_a, wall_a = clients(url, queries, args.clients, args.seconds)
        added, add_err, stop = [0], [0], threading.Event()

        def writer() -> None:
            for x in spare:
                if stop.is_set():
                    return
                status = post(f"{url}/v1/artists/{x.parent.parent.name}/works", "images", x.name, x.read_bytes(), TOKEN)
                added[0] += status == 201
                add_err[0] += status not in (200, 201)
        w = threading.Thread(target=writer)
        w.start()
        lat_b, err_b, wall_b = clients(url, queries, args.clients, args.seconds)
        stop.set()
        w.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores; store: 2 artists x {args.works} icons; CLIP off; "
          f"server: waitress, {max(4, args.clients)} threads; {len(queries)} distinct queries (edited copies and "
          f"new originals)\n")
    print("| run | clients | requests | req/s | p50 ms | p99 ms | errors | notes |\n|---|---|---|---|---|---|---|---|")
    print(row("baseline: direct Scorer.score, no HTTP", 1, lat, 0, base_wall))
    print(row("HTTP /v1/score", args.clients, lat_a, err_a, wall_a))
    print(row("HTTP /v1/score while adding works", args.clients, lat_b, err_b, wall_b,
              f"{added[0]} works added, {add_err[0]} add errors"))
    return 0 if err_a == err_b == add_err[0] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
