"""Planning an interpolation between keyframes, and writing its frames as an animation.

The plan is what both front ends render: frame i is ``METHOD(@a, @b, t)`` for the pair of
keyframes it lies between, with t eased within that segment. The UI and ``studio interpolate``
ask the session for the same plan, so the same inputs give the same frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from PIL import Image

EASINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "ease-in-out": lambda t: (1 - math.cos(math.pi * t)) / 2,  # cosine: slow at every keyframe
}
METHODS = ("slerp", "lerp")
MAX_FRAMES = 120
MAX_KEYFRAMES = 16
VIDEO_MIN_SIDE = 256  # GIF/MP4 frames are upscaled to at least this many pixels


def frame_times(keyframes: int, frames: int, easing: str) -> list[tuple[int, float]]:
    """(segment, t) per frame: frames spread evenly over the path, eased within each segment."""
    ease = EASINGS[easing]
    out = []
    for i in range(frames):
        position = i * (keyframes - 1) / (frames - 1)
        segment = min(int(position), keyframes - 2)
        out.append((segment, round(ease(position - segment), 6)))
    return out


def plan(labels: list[str], frames: int, method: str, easing: str) -> list[dict[str, object]]:
    """One {expr, t} per frame over keyframes referred to by ``labels`` (names or ids)."""
    return [{"expr": f"{method}(@{labels[segment]}, @{labels[segment + 1]}, t)", "t": t}
            for segment, t in frame_times(len(labels), frames, easing)]


def write_animation(images: list[Image.Image], stem: Path, fps: float, gif: bool = True,
                    mp4: bool = True) -> tuple[Path | None, Path | None]:
    """A looping GIF and an H.264 MP4 of the frames (upscaled so small models stay visible)."""
    import imageio.v2 as imageio
    import numpy as np

    side = min(images[0].size)
    factor = max(1, math.ceil(VIDEO_MIN_SIDE / side))
    frames = [np.asarray(im.convert("RGB").resize((im.width * factor, im.height * factor),
                                                 Image.Resampling.NEAREST if factor > 1 else Image.Resampling.BICUBIC))
              for im in images]
    gif_path = stem.with_suffix(".gif") if gif else None
    mp4_path = stem.with_suffix(".mp4") if mp4 else None
    if gif_path is not None:
        imageio.mimsave(gif_path, frames, duration=1000 / fps, loop=0)
    if mp4_path is not None:
        with imageio.get_writer(mp4_path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=2,
                                ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(frame)
    return gif_path, mp4_path
