"""Latent Studio: stored, typed latents and the arithmetic between them.

The core (this package minus ``studio.ui`` and ``studio.cli``) imports neither gradio
nor diffusers; model code lives in the ``pipelines`` package and is loaded lazily.
"""

from studio.errors import StudioError
from studio.objects import Generation, Latent, Vector
from studio.space import Space

__all__ = ["Generation", "Latent", "Space", "StudioError", "Vector"]
__version__ = "0.1.0"
