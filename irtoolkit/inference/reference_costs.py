"""Parameter and compute counts that the networks' authors published, for the configurations irtoolkit ships
under the same name in ``options/_base_/networks/`` (``irtk-complexity`` prints them next to its own counts;
docs/complexity.md explains each difference).

Units are the papers': "GMACs" are multiply-accumulates, and Restormer's "FLOPs" are MACs as well (its 140.99 G
equals the MACs of its convolutions; the attention's matrix products are not in it). All at a 256 x 256 input.
"""
from collections import namedtuple

__all__ = ['Reference', 'REFERENCE_COSTS']

Reference = namedtuple('Reference', 'size params_m gmacs source')

REFERENCE_COSTS = {
    # the official GoPro width-32 model (enc [1, 1, 1, 28]); the paper gives MACs, not parameters
    'NAFNet_width32': Reference((256, 256), None, 16.0, 'NAFNet width 32 (Chen et al., ECCV 2022)'),
    'Restormer': Reference((256, 256), 26.13, 140.99, 'Restormer (Zamir et al., CVPR 2022)'),
    # embed_dim 32, depths 2 x 9 is Uformer-S (Uformer-B: 50.88 M, 89.46 G; Uformer-T: 5.23 M, 12.00 G)
    'Uformer': Reference((256, 256), 20.63, 43.86, 'Uformer-S (Wang et al., CVPR 2022)'),
}
