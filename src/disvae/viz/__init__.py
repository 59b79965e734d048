"""Figures of a VAE: arrays in, pictures (uint8 ``(H, W, C)``) or matplotlib Figures out.

Notebook use::

    from disvae import runs, viz
    model, cfg = runs.load_run("runs/b1")
    pic = viz.traversals(model, n_cols=9, max_traversal=0.05)   # uint8 (H, W, C)
    viz.save_png(pic, "traversals.png")

Run-level plotting (what `disvae plot` does) is `viz.plot_run(run_dir, names, PlotOptions(...))`.
"""

from disvae.viz.curves import figure_to_array, kl_bars, loss_curves, read_train_log
from disvae.viz.gifs import (
    append_training_frame,
    prune_training_frames,
    training_frames,
    training_gif_bytes,
    training_snapshot,
    traversal_animation,
    traversal_gifs,
    write_training_gif,
)
from disvae.viz.images import (
    gif_bytes,
    make_grid,
    png_bytes,
    save_gif,
    save_png,
    tile_patches,
    upsample,
)
from disvae.viz.plots import PLOTS, PlotOptions, RunView, open_run, plot_run
from disvae.viz.reconstructions import data_samples, reconstruct, reconstruct_images, samples
from disvae.viz.traversal import (
    decode,
    encode,
    kl_per_dim,
    shown,
    traversal_images,
    traversal_range,
    traversal_values,
    traversals,
)

__all__ = [
    "PLOTS",
    "PlotOptions",
    "RunView",
    "append_training_frame",
    "data_samples",
    "decode",
    "encode",
    "figure_to_array",
    "gif_bytes",
    "kl_bars",
    "kl_per_dim",
    "loss_curves",
    "make_grid",
    "open_run",
    "plot_run",
    "png_bytes",
    "prune_training_frames",
    "read_train_log",
    "reconstruct",
    "reconstruct_images",
    "samples",
    "save_gif",
    "save_png",
    "shown",
    "tile_patches",
    "training_frames",
    "training_gif_bytes",
    "training_snapshot",
    "traversal_animation",
    "traversal_gifs",
    "traversal_images",
    "traversal_range",
    "traversal_values",
    "traversals",
    "upsample",
    "write_training_gif",
]
