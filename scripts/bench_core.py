"""Core benchmarks, side by side in one run.

1. Render N stored generations through the studio vs the same denoising through a plain
   diffusers call on the same pipeline object (target: ratio <= 1.03), for each model named:
   by default the SD 1.5 layout (tiny-sd, emoji-diffusion), SDXL (tiny-sdxl), SD 3 (tiny-sd3), Flux.1
   (tiny-flux) and PixArt-Sigma (tiny-pixart) side by side.
   Then ``--big-n`` (32) generations of ``--big-model`` (emoji-diffusion) against one plain call of as
   many: the studio sizes its batches to the free memory, so this too is one call (target <= 1.03).
   The UI: ``studio ui`` to its first HTTP 200 against a plain Gradio app (target <= 1.2x), and a
   generate of 4 pictures through it against the same work in a warm CLI process (target <= 1.1x):
   over Gradio's HTTP API with the PNGs fetched after, as a browser does, and through gradio_client.
2. Save and load of one latent in the library (target: milliseconds).
3. ``latents ls`` over 10,000 stored objects (target: < 200 ms).

    python scripts/bench_core.py                 # the six models above; 8 generations, 20 steps
    python scripts/bench_core.py --models emoji-diffusion --n 16
    python scripts/bench_core.py --models "" --big-n 0      # the UI and the library only
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request

import torch


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def plain_kwargs(adapter, noise: torch.Tensor, text: torch.Tensor, s: dict) -> dict:
    """What a user of diffusers passes for the stored latents and conditioning, family by family: the
    prompt embeddings (pooled ones too, PixArt's mask), the negative prompt's, encoded once outside
    the timing as the studio does (none where force_zeros_for_empty_prompt makes it zeros), and the guidance."""
    pipe, n = adapter.pipe, len(noise)
    name = type(pipe).__name__
    parts = adapter.text_space.unpack(text)
    kwargs = {"latents": noise, "guidance_scale": s.get("guidance", 0.0)}
    guided = adapter.cfg_scale(s) is not None
    negative = adapter.text_space.unpack(adapter.encode_text([s["negative_prompt"]] * n)) if guided else {}
    if name == "PixArtSigmaPipeline":
        embeds = parts[""]
        kwargs.update(prompt_embeds=embeds, prompt_attention_mask=(embeds != 0).any(-1).long(),
                      use_resolution_binning=False, clean_caption=False)
        if guided:
            kwargs.update(negative_prompt=None, negative_prompt_embeds=negative[""],
                          negative_prompt_attention_mask=(negative[""] != 0).any(-1).long())
        return kwargs
    if name == "FluxPipeline":
        c, h, w = noise.shape[1:]
        return {**kwargs, "latents": pipe._pack_latents(noise, n, c, h, w), "prompt_embeds": parts["embeds"],
                "pooled_prompt_embeds": parts["pooled"]}
    if name == "StableDiffusion3Pipeline":
        kwargs.update(prompt_embeds=parts["embeds"], pooled_prompt_embeds=parts["pooled"])
        if guided:
            kwargs.update(negative_prompt_embeds=negative["embeds"], negative_pooled_prompt_embeds=negative["pooled"])
        return kwargs
    kwargs["prompt_embeds"] = parts.get("embeds", parts.get(""))
    if "pooled" in parts:
        kwargs["pooled_prompt_embeds"] = parts["pooled"]
    if s["negative_prompt"] or not getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        negative = adapter.text_space.unpack(adapter.encode_text([s["negative_prompt"]] * n))
        kwargs["negative_prompt_embeds"] = negative.get("embeds", negative.get(""))
        if "pooled" in negative:
            kwargs["negative_pooled_prompt_embeds"] = negative["pooled"]
    return kwargs


def bench_render(model: str, n: int, steps: int, repeat: int) -> None:
    from studio.session import Session

    with tempfile.TemporaryDirectory() as home:
        session = Session(home)
        stored = session.sample(model, "a smiling cat face", seed=0, count=n, steps=steps)
        gens = [session.get(s.id) for s in stored]  # what the library gives back
        adapter = session.adapter(model)
        pipe = adapter.pipe
        s = gens[0].settings
        noise = torch.stack([g.roles["noise"].tensor for g in gens]).to(adapter.device, adapter.dtype)
        text = torch.stack([g.roles["text"].tensor for g in gens]).to(adapter.device, adapter.dtype)
        kwargs = plain_kwargs(adapter, noise, text, s)

        def plain():
            pipe(num_inference_steps=steps,
                 height=s["height"], width=s["width"], output_type="pil",
                 generator=[torch.Generator().manual_seed(g.meta["seed"]) for g in gens], **kwargs)

        def studio():
            session.render(gens)

        plain(), studio()  # warm-up: first calls pay one-time allocation costs
        plain_t, studio_t = [], []
        for _ in range(repeat):  # interleaved so drift in machine speed hits both alike
            plain_t += timed(plain, 1)
            studio_t += timed(studio, 1)
        p, st = statistics.median(plain_t), statistics.median(studio_t)
        # each pair ran back to back, so the median of the pairs' ratios is the least drift-prone figure
        ratio = statistics.median(b / a for a, b in zip(plain_t, studio_t, strict=True))
        print(f"render  model={model} ({adapter.kind.name}) n={n} steps={steps} repeats={repeat}")
        print(f"  plain diffusers call : {p:8.3f} s  (median; min {min(plain_t):.3f})")
        print(f"  studio render        : {st:8.3f} s  (median; min {min(studio_t):.3f})")
        print(f"  ratio studio/plain   : {ratio:8.4f}   (median of {repeat} back-to-back pairs; ratio of medians "
              f"{st / p:.4f}; target <= 1.03) {'OK' if ratio <= 1.03 else 'MISSED'}")


PLAIN_APP = """
import sys
import gradio as gr
with gr.Blocks() as demo:
    gr.Textbox(label="prompt")
    gr.Button("Go")
demo.launch(server_port=int(sys.argv[1]), quiet=True, ssr_mode=False)
"""  # the plain Gradio app the studio's start is measured against

CLI_WORKER = """
import sys, tempfile, time
from studio.session import Session
session, out = Session(tempfile.mkdtemp()), tempfile.mkdtemp()
print(session.adapter(sys.argv[1]).default_settings()["guidance"], flush=True)
for line in sys.stdin:  # one seed per line: sample 4, render them to PNGs, as `studio sample -n 4 --out` does
    t0 = time.perf_counter()
    items = session.sample(sys.argv[1], "a smiling cat face", int(line), 4, steps=20)
    session.render_to(items, out)
    print(time.perf_counter() - t0, flush=True)
"""  # the same work as a UI generate, in a warm process of its own


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until_answered(command: list[str], port: int, home: str) -> float:
    """Seconds from starting ``command`` to the first HTTP 200 on ``port``; the process is stopped after."""
    import os
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "STUDIO_HOME": home})
    try:
        _until_up(port)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()


def bench_ui(model: str, repeat: int) -> None:
    """The UI's start against a plain Gradio app, and a UI generate against the same work in a warm CLI process."""
    import subprocess
    import sys
    from pathlib import Path

    from gradio_client import Client

    studio_cmd = str(Path(sys.executable).with_name("studio"))
    with tempfile.TemporaryDirectory() as home:
        starts = []
        for _ in range(repeat):  # alternated, so drift in machine speed hits both alike
            port = _free_port()
            plain = _until_answered([sys.executable, "-c", PLAIN_APP, str(port)], port, home)
            port = _free_port()
            ours = _until_answered([studio_cmd, "ui", "--model", model, "--port", str(port)], port, home)
            starts.append((plain, ours))
        ratio = statistics.median(b / a for a, b in starts)
        print(f"ui start  model={model} repeats={repeat}  (to the first HTTP 200)")
        print(f"  plain gradio app     : {statistics.median(a for a, _ in starts):8.2f} s")
        print(f"  studio ui            : {statistics.median(b for _, b in starts):8.2f} s")
        print(f"  ratio studio/plain   : {ratio:8.3f}   (median of {repeat} pairs; target <= 1.2) "
              f"{'OK' if ratio <= 1.2 else 'MISSED'}")

        port = _free_port()
        server = subprocess.Popen([studio_cmd, "--home", home, "ui", "--model", model, "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        worker = subprocess.Popen([sys.executable, "-c", CLI_WORKER, model], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            _until_up(port)
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            guidance = float(worker.stdout.readline())  # the model's own default, which the CLI renders with
            seeds = iter(range(100, 100_000, 10))  # new seeds each time: nothing comes from a cache
            inputs = lambda: [model, "a smiling cat face", next(seeds), 4, 20, guidance, 1.0, "", ""]  # noqa: E731

            def through_client() -> float:
                t0 = time.perf_counter()
                client.predict(*inputs(), api_name="/generate")
                return time.perf_counter() - t0

            def over_http() -> float:
                t0 = time.perf_counter()
                for url in _generate_over_http(port, inputs()):  # then its PNGs, as a browser fetches them
                    urllib.request.urlopen(url).read()
                return time.perf_counter() - t0

            def cli() -> float:
                worker.stdin.write(f"{next(seeds)}\n")
                worker.stdin.flush()
                return float(worker.stdout.readline())

            through_client(), over_http(), cli()  # warm-up: the model loads in each
            triples = [(cli(), over_http(), through_client()) for _ in range(repeat)]
        finally:
            server.terminate()
            worker.terminate()
            server.wait()
            worker.wait()
        print(f"ui generate  model={model} 4 pictures, 20 steps, repeats={repeat}")
        print(f"  warm CLI process     : {statistics.median(t[0] for t in triples):8.3f} s  (sample + PNGs)")
        for column, what in ((1, "UI over HTTP"), (2, "UI, gradio_client")):
            ratio = statistics.median(t[column] / t[0] for t in triples)
            print(f"  {what:21s}: {statistics.median(t[column] for t in triples):8.3f} s  ratio UI/CLI {ratio:6.3f} "
                  f"(median of {repeat} pairs; target <= 1.1) {'OK' if ratio <= 1.1 else 'MISSED'}")
        print("  (over HTTP: Gradio's own API, a POST then its event stream, then the 4 PNGs fetched; gradio_client "
              "polls its stream every 50 ms and fetches files its own slower way)")


def _generate_over_http(port: int, data: list) -> list[str]:
    """A UI generate through Gradio's HTTP API (POST, then read the event stream); returns the PNGs' URLs."""
    base = f"http://127.0.0.1:{port}/gradio_api/call/generate"
    request = urllib.request.Request(base, json.dumps({"data": data}).encode(), {"Content-Type": "application/json"})
    event = json.load(urllib.request.urlopen(request))["event_id"]
    kind = None
    with urllib.request.urlopen(f"{base}/{event}") as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("event:"):
                kind = line[len("event:"):].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                if kind == "error":
                    raise RuntimeError(f"the UI's generate failed: {line}")
                return [item["image"]["url"] for item in json.loads(line[len("data:"):])[0]]
    raise RuntimeError("the UI's event stream ended without a result")


def _until_up(port: int) -> None:
    """Wait until a server on ``port`` answers its page with HTTP 200."""
    import urllib.request

    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.05)


def bench_library(count: int) -> None:
    from click.testing import CliRunner

    from studio.cli import main
    from studio.objects import Generation, Latent
    from studio.space import Space
    from studio.store import Library

    noise_space = Space("noise", "vae-bench", (4, 64, 64))  # an SD 1.x 512 px generation
    text_space = Space("text", "text-bench", (77, 768))
    with tempfile.TemporaryDirectory() as home:
        lib = Library(home)
        g = torch.Generator().manual_seed(0)

        def generation(i: int) -> Generation:
            return Generation({"noise": Latent(torch.randn(noise_space.shape, generator=g), noise_space),
                               "text": Latent(torch.randn(text_space.shape, generator=g), text_space)},
                              "bench", {"steps": 20}, {"seed": i, "prompt": f"prompt {i}"})

        gens = [generation(i) for i in range(30)]
        ids = []
        save = timed(lambda: ids.append(lib.put(gens[len(ids)])), len(gens))
        load = [t for object_id in ids for t in timed(lambda object_id=object_id: lib.get(object_id), 1)]
        size = lib.path_of(ids[0]).stat().st_size / 1024
        print(f"library  one generation of {size:.0f} KiB (noise 4x64x64 + text 77x768), {len(gens)} each")
        print(f"  save (atomic, fsync) : {statistics.median(save) * 1e3:8.2f} ms median, max {max(save) * 1e3:.2f}")
        print(f"  load (verify id)     : {statistics.median(load) * 1e3:8.2f} ms median, max {max(load) * 1e3:.2f}")

        small = Space("gan-z", "stylegan-bench", (16,))
        t0 = time.perf_counter()
        for i in range(count - len(ids)):
            lib.put(Latent(torch.full(small.shape, float(i)), small, {"seed": i}), name=f"z{i}" if i % 3 == 0 else None,
                    tags=["bench"] if i % 5 == 0 else ())
        fill = time.perf_counter() - t0
        ls_t = timed(lambda: lib.ls(), 5)
        search_t = timed(lambda: lib.ls(tag="bench", text="z1"), 5)
        runner = CliRunner()
        cli_t = timed(lambda: runner.invoke(main, ["--home", home, "latents", "ls", "--all", "--json"]), 3)
        print(f"  list   {len(lib)} objects    : {statistics.median(ls_t) * 1e3:8.1f} ms median (target < 200) "
              f"{'OK' if statistics.median(ls_t) < 0.2 else 'MISSED'}")
        print(f"  search {len(lib)} objects    : {statistics.median(search_t) * 1e3:8.1f} ms median (tag + text filter)")
        print(f"  'studio latents ls --all --json' : {statistics.median(cli_t) * 1e3:8.1f} ms median in-process "
              f"(CLI parsing + JSON of all rows; target < 200) {'OK' if statistics.median(cli_t) < 0.2 else 'MISSED'}")
        print(f"  (filling the library took {fill:.1f} s, {fill / count * 1e3:.2f} ms per object)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-sd,tiny-sdxl,emoji-diffusion,tiny-sd3,tiny-flux,tiny-pixart",
                    help="comma-separated diffusion model specs to render with, side by side")
    ap.add_argument("--n", type=int, default=8, help="generations per render call")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5, help="timed repeats of each render path")
    ap.add_argument("--objects", type=int, default=10_000, help="library size for the listing benchmark")
    ap.add_argument("--big-n", type=int, default=32, help="generations in the one-big-call render (0: skip)")
    ap.add_argument("--big-model", default="emoji-diffusion", help="model for the one-big-call render and the UI")
    ap.add_argument("--ui", action=argparse.BooleanOptionalAction, default=True,
                    help="time the UI's start and a UI generate (--no-ui to skip)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}")
    for model in filter(None, (m.strip() for m in args.models.split(","))):  # --models "": none
        bench_render(model, args.n, args.steps, args.repeat)
    if args.big_n:  # one call of many: the studio's batch is sized to the free memory, not capped at 8
        bench_render(args.big_model, args.big_n, args.steps, max(3, args.repeat // 3))
    if args.ui:
        bench_ui(args.big_model, max(3, args.repeat // 2))
    bench_library(args.objects)


if __name__ == "__main__":
    main()
