"""Shared fixtures: an empty library per test, small stored objects to combine."""

from __future__ import annotations

import pytest
import torch

from studio.objects import Generation, Latent, Lineage, Vector
from studio.session import Session
from studio.space import Space

NOISE = Space("noise", "vae-test0001", (4, 2, 2))
TEXT = Space("text", "text-test0001", (3, 2))
OTHER = Space("gan-z", "stylegan-test0001", (16,))


def noise_latent(seed: int, space: Space = NOISE) -> Latent:
    g = torch.Generator().manual_seed(seed)
    return Latent(torch.randn(space.shape, generator=g), space, {"seed": seed, "model": "test"},
                  Lineage("sample", {"seed": seed}))


def generation(seed: int) -> Generation:
    return Generation({"noise": noise_latent(seed), "text": noise_latent(seed + 100, TEXT)}, "test",
                      {"steps": 2}, {"seed": seed, "prompt": f"p{seed}"}, Lineage("sample", {"seed": seed}))


def vector(seed: int, space: Space = TEXT) -> Vector:
    g = torch.Generator().manual_seed(seed)
    return Vector(torch.randn(space.shape, generator=g), space, "mean-difference")


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    monkeypatch.setenv("STUDIO_HOME", str(path))
    return path


@pytest.fixture
def session(home):
    s = Session(home)
    yield s
    s.library.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """One library for a whole test module (the model tests share their loaded adapters through it)."""
    s = Session(tmp_path_factory.mktemp("home"))
    yield s
    s.library.close()


def gaussian_denoiser(alphas: torch.Tensor, seen: list | None = None):
    """A UNet forward that is the optimal denoiser for Gaussian latents ~ N(0, 0.25): E[noise | x].

    Its behaviour is known, so inversion and its re-render can be checked exactly on a random model.
    ``seen`` collects the keyword arguments of each call (which conditioning reached the UNet)."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    def forward(sample, timestep, *args, return_dict=True, **kwargs):
        if seen is not None:
            seen.append(sorted(k for k in kwargs if kwargs[k] is not None))
        a = alphas[int(timestep)]
        eps = (1 - a).sqrt() * sample / (a * 0.25 + 1 - a)
        return UNet2DConditionOutput(sample=eps) if return_dict else (eps,)

    return forward
