"""Time the built-in dSprites renderer and measure its agreement with the published GIF frames.

Usage: ``python benchmarks/render_dsprites.py [--gif PATH]``. Renders the full 737,280-image grid
into a temporary cache folder (the user's cache is not touched), then reloads it (a memory map)
and compares 202 frames of ``dsprites.gif`` with our renders of the same factor classes
(frame table: ``shared/data/dsprites/README.md``).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from disvae.data import dsprites as ds

DEFAULT_GIF = Path(__file__).resolve().parents[2] / "shared/data/dsprites/dsprites.gif"
GIF_RUNS = ds.GIF_RUNS


def time_full_grid() -> None:
    """Render the full grid into a fresh cache, then time the memory-mapped reload."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DISVAE_CACHE"] = tmp
        start = time.perf_counter()
        packed = ds.rendered_images()
        elapsed = time.perf_counter() - start
        size = Path(packed.filename).stat().st_size
        start = time.perf_counter()
        again = ds.rendered_images()
        reload = time.perf_counter() - start
        on = float(np.unpackbits(again[::997], axis=1).mean())
        del packed, again
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"full grid: {ds.N_IMAGES} images rendered and cached in {elapsed:.2f} s")
    print(f"cache file: {size / 1e6:.1f} MB; reload (memory map) {reload * 1e3:.1f} ms")
    print(f"mean on-pixel fraction (sample) {on:.4f}; peak RSS {peak:.0f} MiB")


def gif_agreement(gif: Path) -> None:
    """Wrong pixels of our renders against the identified GIF frames."""
    from PIL import Image, ImageSequence

    with Image.open(gif) as im:
        frames = np.stack([np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)]) > 127
    index, classes = [], []
    for first, shape, varying, count, base in GIF_RUNS:
        for k in range(count):
            c = list(base)
            c[varying] = k
            index.append(first + k)
            classes.append([shape, *c])
    wrong = (ds.render(np.array(classes)) != frames[index]).reshape(len(index), -1).sum(1)
    print(
        f"GIF agreement over {len(index)} frames: {int(wrong.sum())} wrong pixels in total, "
        f"max {int(wrong.max())} in a frame, {int((wrong == 0).sum())} frames exact"
    )
    for name, shape in (("square", 0), ("ellipse", 1), ("heart", 2)):
        sel = np.array(classes)[:, 0] == shape
        print(f"  {name}: {int(wrong[sel].sum())} wrong pixels over {int(sel.sum())} frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gif", type=Path, default=DEFAULT_GIF)
    args = parser.parse_args()
    time_full_grid()
    if args.gif.is_file():
        gif_agreement(args.gif)
    else:
        print(f"GIF agreement skipped: {args.gif} not found")


if __name__ == "__main__":
    main()
