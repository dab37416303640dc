"""Speed of the embedded models on this machine, as a user meets them.

  * cold start: ``studio sample --prompt ... --out DIR`` in a fresh process, from launch to
    the first PNG on disk (target <= 10 s on a 2-core CPU);
  * warm batch: 16 images from a loaded model (targets: GAN < 1 s, diffusion at 20 steps < 10 s);
  * peak memory (resident set) of each cold-start process, as the process itself reports it (its
    VmHWM: a forked child's own usage counts, from its fork, the parent's memory too).

    python scripts/bench_models.py
    python scripts/bench_models.py --models emoji-gan --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"gan": 1.0, "diffusion": 10.0}


PEAK_OF_ITSELF = """
import sys
from studio.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:  # the high-water mark of this process's own memory (set anew at exec: nothing of its parent's)
    with open("/proc/self/status") as f:
        print(next(line for line in f if line.startswith("VmHWM:")).split()[1], "peak-kB", file=sys.stderr)
"""


def cold_start(model: str, repeat: int) -> tuple[list[float], float]:
    """Seconds from process launch to the PNG, and the peak resident memory in MiB the process itself reached."""
    times, peak = [], 0.0
    for i in range(repeat):
        with tempfile.TemporaryDirectory() as home:
            out = Path(home) / "out"
            env = {**os.environ, "STUDIO_HOME": home}
            cmd = [sys.executable, "-c", PEAK_OF_ITSELF, "sample", "--model", model, "--prompt", "smiling cat face",
                   "--seed", str(3 + i), "--out", str(out)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0 or not list(out.glob("*.png")):
                raise SystemExit(f"{model}: cold start failed: {proc.stderr[-500:]}")
            times.append(elapsed)
            kb = [line.split()[0] for line in proc.stderr.splitlines() if line.endswith("peak-kB")]
            peak = max(peak, int(kb[-1]) / 1024)
    return times, peak


def warm_batch(model: str, n: int, repeat: int) -> tuple[str, list[float]]:
    from studio.session import Session

    with tempfile.TemporaryDirectory() as home:
        session = Session(home)
        adapter = session.adapter(model)
        settings = {"steps": 20} if adapter.family == "diffusion" else {}
        gens = adapter.sample(list(range(n)), ["smiling cat face"] * n, **settings)
        adapter.render(gens[:2])  # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            images = adapter.render(gens)
            times.append(time.perf_counter() - t0)
            assert len(images) == n
        return adapter.family, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="emoji-diffusion,emoji-gan")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    models = args.models.split(",")
    colds = {model: cold_start(model, args.repeat) for model in models}  # before this process loads any model
    for model in models:
        cold, peak = colds[model]
        family, warm = warm_batch(model, args.batch, args.repeat)
        cold_med, warm_med = statistics.median(cold), statistics.median(warm)
        print(f"\n{model} ({family})")
        print(f"  cold start to first PNG : {cold_med:6.2f} s median of {len(cold)} (min {min(cold):.2f}; "
              f"target <= 10 s) {'OK' if cold_med <= 10 else 'MISSED'}")
        print(f"  warm batch of {args.batch:<3}       : {warm_med:6.2f} s median (min {min(warm):.2f}; "
              f"target < {TARGETS[family]:g} s{' at 20 steps' if family == 'diffusion' else ''}) "
              f"{'OK' if warm_med < TARGETS[family] else 'MISSED'}")
        print(f"  peak memory (cold run)  : {peak:6.0f} MiB resident (VmHWM of the process itself)")


if __name__ == "__main__":
    main()
