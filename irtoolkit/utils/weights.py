"""The one place for weight files (VGG, LPIPS backbones, pyiqa metric weights, timm encoders).

``IRTOOLKIT_WEIGHTS`` (default ``~/.cache/irtoolkit/weights``) holds files under their upstream names. Nothing
is ever downloaded: a missing file raises one line naming the file and the folder to put it in.
"""
import os
import os.path as osp


def weights_dir():
    """The weights folder: ``$IRTOOLKIT_WEIGHTS`` or ``~/.cache/irtoolkit/weights``."""
    return osp.abspath(osp.expanduser(os.environ.get('IRTOOLKIT_WEIGHTS', '~/.cache/irtoolkit/weights')))


class MissingWeightsError(FileNotFoundError):
    """A weight file is not where irtoolkit looks for it."""


def find_weight(filename, purpose, extra_dirs=()):
    """Absolute path of ``filename`` in the weights folder (or ``extra_dirs``); else MissingWeightsError."""
    if osp.isabs(filename) and osp.isfile(filename):
        return filename
    for d in (weights_dir(), *extra_dirs):
        path = osp.join(d, filename)
        if osp.isfile(path):
            return path
    raise MissingWeightsError(f'{purpose} needs weight file {osp.basename(filename)}: put it in {weights_dir()} '
                              '(or set IRTOOLKIT_WEIGHTS); irtoolkit never downloads weights')
