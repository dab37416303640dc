"""Load test for the Gradio studio: N concurrent gradio_client clients, for a bounded time and request count.

Every client generates with its own prompt and seeds and checks that what comes back is what it
asked for: the summaries (seed, prompt), the recipe inside each returned PNG (id, seed, prompt) and
its own session's state (``/last_results``). Any difference is a mix-up. Prints requests served,
errors, latency p50/p95 and mix-ups; exits 1 if there were errors or mix-ups.

    python scripts/load_ui.py                                  # starts a studio on tiny-sd, temporary library
    python scripts/load_ui.py --clients 8 --seconds 60 --max-requests 400
    python scripts/load_ui.py --url http://127.0.0.1:7860/     # a running studio (localhost only)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Tally:
    """What all clients saw, behind one lock."""

    budget: int  # requests left to send
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mixups: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        with self.lock:
            if self.budget <= 0:
                return False
            self.budget -= 1
            return True


def check(k: int, i: int, prompt: str, seed: int, count: int, gallery, info, last) -> list[str]:
    """Differences between what client k asked for in request i and what it got back."""
    from studio import formats

    problems = []
    if len(info) != count or len(gallery) != count:
        problems.append(f"client {k} request {i}: asked for {count} items, got {len(info)} / {len(gallery)} pictures")
    for j, (item, picture) in enumerate(zip(info, gallery)):
        if item.get("seed") != seed + j or item.get("prompt") != prompt:
            problems.append(f"client {k} request {i}: got seed {item.get('seed')} prompt {item.get('prompt')!r}, "
                            f"asked seed {seed + j} prompt {prompt!r}")
        _, recipe = formats.read_png(picture["image"])
        if (recipe.get("id"), recipe.get("seed"), recipe.get("prompt")) != (item.get("id"), seed + j, prompt):
            problems.append(f"client {k} request {i}: picture {j} carries {recipe.get('id', '')[:12]} "
                            f"seed {recipe.get('seed')} prompt {recipe.get('prompt')!r}")
    if last != [item.get("id") for item in info]:
        problems.append(f"client {k} request {i}: its session state holds other ids ({len(last or [])} item(s))")
    return problems


def client_loop(k: int, url: str, args: argparse.Namespace, deadline: float, tally: Tally) -> None:
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
    except Exception as exc:  # a client that cannot connect counts as an error, not a crash
        with tally.lock:
            tally.errors.append(f"client {k}: cannot connect: {exc}")
        return
    i = 0
    while time.monotonic() < deadline and tally.take():
        prompt = f"c{k}r{i}"  # short: the tiny model reads 16 tokens
        seed = (k + 1) * 1_000_000 + i * args.count
        start = time.perf_counter()
        try:
            gallery, info = client.predict(args.model, prompt, seed, args.count, args.steps, 7.5, 1.0, "",
                                           api_name="/generate")
            latency = time.perf_counter() - start
            last = client.predict(api_name="/last_results")
            problems = check(k, i, prompt, seed, args.count, gallery, info, last)
            with tally.lock:
                tally.latencies.append(latency)
                tally.mixups += problems
        except Exception as exc:
            with tally.lock:
                tally.errors.append(f"client {k} request {i}: {type(exc).__name__}: {exc}")
        i += 1


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running studio on 127.0.0.1/localhost (default: start one)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send requests (default 60)")
    parser.add_argument("--max-requests", type=int, default=400, help="stop after this many requests (default 400)")
    parser.add_argument("--model", default="tiny-sd", help="model to generate with (default tiny-sd)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per request (default 2)")
    parser.add_argument("--count", type=int, default=1, help="generations per request (default 1)")
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or args.seconds <= 0 or args.max_requests < 1:
        parser.error("--clients must be 1..64, --seconds positive, --max-requests at least 1")

    running = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            parser.error(f"--url must point at this machine (127.0.0.1 or localhost), not {host}")
        url = args.url
    else:
        from studio.session import Session
        from studio.ui import server

        home = tempfile.mkdtemp(prefix="studio-load-")
        running = server.launch(Session(home), args.model, port=None, block=False, echo=lambda line: None)
        url = running.local_url
        print(f"started a studio at {url} (model {args.model}, library {home})")

    tally = Tally(args.max_requests)
    deadline = time.monotonic() + args.seconds
    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k, url, args, deadline, tally), daemon=True)
               for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if running is not None:
        running.close()

    served = len(tally.latencies)
    print(f"clients {args.clients}, {elapsed:.1f} s, model {args.model}, {args.count} item(s) x {args.steps} steps "
          f"per request, budget {args.max_requests} requests")
    print(f"requests served: {served}  errors: {len(tally.errors)}  mix-ups: {len(tally.mixups)}")
    if served:
        lat = sorted(tally.latencies)
        print(f"latency p50 {percentile(lat, 50):.2f} s  p95 {percentile(lat, 95):.2f} s  max {lat[-1]:.2f} s  "
              f"throughput {served / elapsed:.2f} req/s")
    for line in (tally.errors + tally.mixups)[:10]:
        print("  " + line)
    return 1 if tally.errors or tally.mixups or not served else 0


if __name__ == "__main__":
    sys.exit(main())
