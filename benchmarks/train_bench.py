"""Training step time per preset, and what our training wrapper costs over a bare loop.

For each preset, in the same process and on the same random icons, alternate timed blocks of
(a) `generator.train.Session.step` -- batch draw, diffusion loss, backward, gradient clipping,
Adam, EMA update, loss bookkeeping -- and (b) a bare loop over an identically built
Unet/GaussianDiffusion: batch draw, loss, backward, Adam. Alternating blocks share whatever else
the machine is doing; the medians of the blocks are compared. Target: overhead <= 10%.

    python benchmarks/train_bench.py [--full] [--steps 5] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.optim import Adam

from generator.diffusion import build, resolve
from generator.train import Session

CPU_PRESETS = ("small", "small-baseline")
FULL_PRESETS = ("seed", "seed-baseline")
ICONS = 64


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(step, n: int) -> float:
    """Seconds per step over `n` steps."""
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def bench(preset: str, steps: int, repeats: int) -> dict:
    config = resolve(preset)
    torch.manual_seed(0)
    icons = torch.rand(ICONS, 3, config.image_size, config.image_size)
    session = Session(config, icons, torch.device("cpu"))
    bare = build(config)
    opt = Adam(bare.parameters(), lr=config.lr, betas=(0.9, 0.99))

    def bare_step() -> None:
        loss = bare(icons[torch.randint(ICONS, (config.batch_size,))])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timed(session.step, 2)  # warm-up: allocator, first-call dispatch
    timed(bare_step, 2)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(timed(session.step, steps))
        theirs.append(timed(bare_step, steps))
    wrapper, loop = statistics.median(ours), statistics.median(theirs)
    return {
        "preset": preset, "dim": config.dim, "dim_mults": config.dim_mults, "size": config.image_size,
        "batch": config.batch_size, "params": sum(p.numel() for p in bare.parameters()),
        "bare_ms": 1000 * loop, "wrapper_ms": 1000 * wrapper, "overhead": wrapper / loop - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the 64 px seed presets (slow on CPU)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="alternating blocks per loop kind")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} on CPU with "
          f"{torch.get_num_threads()} thread(s); load average before: {load}")
    print(f"Median of {args.repeats} alternating blocks of {args.steps} steps each.\n")
    print("| preset | Unet | size | batch | params | bare loop ms/step | wrapper ms/step | overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in CPU_PRESETS + (FULL_PRESETS if args.full else ()):
        r = bench(preset, args.steps, args.repeats)
        print(f"| {r['preset']} | dim {r['dim']}, {r['dim_mults']} | {r['size']} | {r['batch']} | "
              f"{r['params'] / 1e6:.2f} M | {r['bare_ms']:.0f} | {r['wrapper_ms']:.0f} | {100 * r['overhead']:+.1f}% |",
              flush=True)


if __name__ == "__main__":
    main()
