"""Inference helpers: image files in and out (:mod:`.image_io`), tiled forward passes (:mod:`.tiling`) and
loading any registered network from options plus a checkpoint (:mod:`.loader`)."""
