"""Inference helpers: tiled forward passes (:mod:`.tiling`), loading any registered network from options plus a
checkpoint (:mod:`.loader`), recognising a network from a checkpoint's contents (:mod:`.recognise`), export
(:mod:`.export`) and complexity figures (:mod:`.complexity`)."""
