"""``val.tile``: validation and testing tile by tile, so a benchmark image larger than the device's memory is
scored with the metrics the whole image would get.

Options (``val`` section of a recipe; ``irtk-test --tile N`` / ``--tile-overlap`` / ``--tile-exact`` override them)::

    val:
      tile: 512                                   # shorthand for {size: 512}
      tile: {size: 512, overlap: 32, exact: auto, align: 0}

Unset (the default) or 0: every image runs whole, exactly as before (``net(lq)``, bit for bit).

``exact`` picks the tiling of :func:`irtoolkit.inference.tiling.tiled_forward`:

* ``auto`` (default): the exact schedule of :mod:`irtoolkit.inference.exact_tiling` when the network has one
  (NAFNet, KBNet, Restormer, the ConStyle U-Nets: output equal to the whole-image output within float rounding, the
  ConStyle latent and every pooled statistic taken over the whole image), else blended tiles.
* ``true``: the exact schedule; a network without one is an option error before anything runs.
* ``false``: blended overlapping tiles (``overlap``, ``align``). Exact for a purely local network whose receptive
  field stays within ``overlap // 4`` pixels; a network with global operations sees per-tile statistics (NAFNet's
  channel attention, ConStyle's latent), which changes its output (docs/evaluation.md measures by how much).

The tiled path runs the callable :meth:`~irtoolkit.training.image_validation.ImageValidation.test` runs
(:meth:`~irtoolkit.training.image_validation.ImageValidation.network_forward`, the network itself unless a model
says otherwise), so it sees the same inputs; images stay on the CPU while their tiles run on the model's device.
"""
from dataclasses import dataclass

import torch

from irtoolkit.config.schema import Option, true_false_auto
from irtoolkit.utils.errors import OptionError

__all__ = ['TILE_SCHEMA', 'TILE_OPTION', 'TILE_EXACT_WORDS', 'TileSettings', 'tile_settings', 'tile_with_overrides',
           'network_align']


def _tile_size(v):
    """0 (off) or an int >= 16"""
    return isinstance(v, int) and not isinstance(v, bool) and (v == 0 or v >= 16)


def _non_negative_int(v):
    """an int >= 0"""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# ``--tile-exact`` (irtk-test, irtk-infer) -> the ``exact`` value of val.tile / tiled_forward
TILE_EXACT_WORDS = {'auto': 'auto', 'true': True, 'false': False}

TILE_SCHEMA = {
    'size': Option(_tile_size, doc='tile side in pixels at the input resolution (>= 16; 0: whole images); required'),
    'overlap': Option(_non_negative_int, 32, doc='blended tiles: minimum overlap of neighbouring tiles (< size); the '
                      'outer overlap // 4 pixels of each inner tile edge get weight 0'),
    'exact': Option(true_false_auto, 'auto', doc='auto: exact tiles when the network has a schedule '
                    '(irtoolkit.inference.exact_tiling), else blended; true: exact or an option error; false: blended'),
    'align': Option(_non_negative_int, 0, doc="blended tiles: tile grid multiple; 0: the network's padder_size when "
                    'it has one, else 1'),
}
TILE_OPTION = Option((_tile_size, TILE_SCHEMA), doc='validate/test tile by tile (images larger than memory): the tile '
                     'size, or {size, overlap, exact, align}; unset or 0: whole images (docs/evaluation.md)')


@dataclass(frozen=True)
class TileSettings:
    """A resolved ``val.tile``: ``size`` > 0, ``overlap``, ``exact`` (True, False or 'auto'), ``align`` (0: from
    the network)."""

    size: int
    overlap: int = TILE_SCHEMA['overlap'].default
    exact: object = TILE_SCHEMA['exact'].default
    align: int = TILE_SCHEMA['align'].default

    def runs_exact(self, forward):
        """Whether ``forward`` gets the exact schedule (``exact: true``, or ``auto`` and it has one)."""
        from irtoolkit.inference.exact_tiling import supports_exact_tiling
        return self.exact is True or (self.exact == 'auto' and supports_exact_tiling(forward))

    def describe(self, forward):
        """One line: the tiling ``forward`` gets (for the log)."""
        name = type(getattr(forward, 'module', forward)).__name__
        if self.runs_exact(forward):
            return f'val.tile: {self.size} px exact tiles ({name}: equal to whole images)'
        why = '' if self.exact is False else f'; {name} has no exact schedule'
        return (f'val.tile: {self.size} px blended tiles, overlap {self.overlap}, align '
                f'{self.align or network_align(forward)} ({name}{why})')

    def check(self, forward, where=''):
        """The one-line option error of settings ``forward`` cannot run with, before any image does: ``exact:
        true`` for a network without an exact schedule; blended tiles no larger than their overlap."""
        from irtoolkit.inference.exact_tiling import supports_exact_tiling
        if self.exact is True and not supports_exact_tiling(forward):
            raise OptionError(f'{where}val.tile.exact: true, but {type(forward).__name__} has no exact tiling schedule '
                              '(NAFNet, KBNet, Restormer and the ConStyle U-Nets have one); use exact: auto or false')
        align = self.align or network_align(forward)
        if not self.runs_exact(forward) and self.size // align * align <= self.overlap:
            raise OptionError(f'{where}val.tile.overlap: {self.overlap} must be smaller than the tile '
                              f'({self.size} px, {max(align, self.size // align * align)} on the align-{align} grid)')

    @torch.no_grad()
    def restore(self, forward, lq):
        """``forward`` on each image of ``lq`` (B, C, H, W), tile by tile; (B, C_out, H*s, W*s) on ``lq``'s device.

        Each image stays on the CPU (exact tiling keeps its full-size maps where the image is) and its tiles run
        on ``lq``'s device."""
        from irtoolkit.inference.tiling import tiled_forward
        align = self.align or network_align(forward)
        return torch.cat([tiled_forward(forward, lq[i:i + 1].cpu(), tile=self.size, overlap=self.overlap, align=align,
                                        exact=self.exact, device=lq.device, out_device=lq.device)
                          for i in range(lq.shape[0])])


def network_align(forward):
    """Blended tiles' grid for ``forward``: its zero padding multiple (NAFNet's and KBNet's ``padder_size``), as
    irtk-infer uses; 1 otherwise."""
    return int(getattr(forward, 'padder_size', 1) or 1)


def tile_settings(value, where=''):
    """``val.tile`` (an int, a mapping or None, already checked against :data:`TILE_OPTION`) as
    :class:`TileSettings`, or None for whole images (unset or size 0)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        value = {'size': value}
    if value.get('size') is None:
        raise OptionError(f'{where}val.tile.size: missing (the tile side in pixels, e.g. 512)')
    if value['size'] == 0:
        return None
    return TileSettings(**{k: value[k] for k in TILE_SCHEMA if value.get(k) is not None})


def tile_with_overrides(value, size=None, overlap=None, exact=None):
    """``val.tile`` with the command line's ``--tile``, ``--tile-overlap``, ``--tile-exact`` written over it (None:
    keep the recipe's); 0 for ``size`` turns tiling off. Returns the new ``val.tile`` (a mapping, or None)."""
    if size is None and overlap is None and exact is None:
        return value
    out = dict(value) if isinstance(value, dict) else ({'size': value} if value is not None else {})
    for key, given in (('size', size), ('overlap', overlap), ('exact', exact)):
        if given is not None:
            out[key] = given
    if out.get('size') is None:
        raise OptionError('--tile-overlap / --tile-exact: no tile size (give --tile N or val.tile in the recipe)')
    return out if out['size'] else None
