"""The one place for weight files (VGG / AlexNet backbones, LPIPS layers, pyiqa metric weights, timm encoders).

``$IRTOOLKIT_WEIGHTS`` (default ``~/.cache/irtoolkit/weights``) holds files under their upstream names:

* torchvision ImageNet checkpoints and pyiqa's ``IQA-PyTorch-Weights`` files flat in the folder
  (``vgg19-dcbb9e9d.pth``, ``alexnet-owt-7be5be79.pth``, ``LPIPS_v0.1_alex-df73285e.pth``, ...);
* Hugging Face hub files (timm backbones) as ``hf/<repo id>/<file>`` (``hf/timm/resnet50.a1_in1k/model.safetensors``).

Nothing is ever downloaded. :func:`offline_weights` wraps the construction of third-party models (pyiqa metrics,
lpips, torchvision/timm backbones): every download hook they use is redirected to this folder, and a missing file
raises :class:`MissingWeightsError` with one line naming the file and the folder — never a random network.
``irtk-weights`` (``python tools/weights.py``, :mod:`irtoolkit.cli.weights`) lists, for every consumer in
:data:`REQUIREMENTS`, which files it needs and whether they are present (:func:`weights_report`).
"""
import contextlib
import os
import os.path as osp
import sys
import threading
from collections import OrderedDict, namedtuple
from urllib.parse import urlparse

from irtoolkit.utils.errors import UserError

ENV_VAR = 'IRTOOLKIT_WEIGHTS'
DEFAULT_DIR = '~/.cache/irtoolkit/weights'


def weights_dir():
    """The weights folder: ``$IRTOOLKIT_WEIGHTS`` or ``~/.cache/irtoolkit/weights``."""
    return osp.abspath(osp.expanduser(os.environ.get(ENV_VAR) or DEFAULT_DIR))


class MissingWeightsError(UserError, FileNotFoundError):
    """A weight file is not where irtoolkit looks for it."""

    def __init__(self, message, filename=None):
        super().__init__(message)
        self.filename = filename

    def __str__(self):  # FileNotFoundError would print "[Errno None] None: ..." otherwise
        return self.args[0]


def find_weight(filename, purpose, extra_dirs=()):
    """Absolute path of ``filename`` in the weights folder (or ``extra_dirs``); else MissingWeightsError."""
    if osp.isabs(filename):
        if osp.isfile(filename):
            return filename
        raise MissingWeightsError(f'{purpose} needs weight file {filename}, which does not exist', filename)
    for d in (weights_dir(), *extra_dirs):
        path = osp.join(d, filename)
        if osp.isfile(path):
            return path
    where = osp.join(weights_dir(), osp.dirname(filename)) if osp.dirname(filename) else weights_dir()
    raise MissingWeightsError(f'{purpose} needs weight file {osp.basename(filename)}: put it in {where} '
                              f'(or set {ENV_VAR}); irtoolkit never downloads weights', filename)


# ---------------------------------------------------------------------------------------------------------------
# What needs which file. Files are listed in the order their consumer asks for them.
WeightFile = namedtuple('WeightFile', 'name source')

_TV = 'https://download.pytorch.org/models/'
_IQA = 'https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/'
TV_ALEXNET = WeightFile('alexnet-owt-7be5be79.pth', _TV + 'alexnet-owt-7be5be79.pth')
TV_VGG16 = WeightFile('vgg16-397923af.pth', _TV + 'vgg16-397923af.pth')
TV_VGG19 = WeightFile('vgg19-dcbb9e9d.pth', _TV + 'vgg19-dcbb9e9d.pth')
TV_SQUEEZE = WeightFile('squeezenet1_1-b8a52dc0.pth', _TV + 'squeezenet1_1-b8a52dc0.pth')
TV_RESNET18 = WeightFile('resnet18-f37072fd.pth', _TV + 'resnet18-f37072fd.pth')


def _iqa(name):
    return WeightFile(name, _IQA + name)


def _hf(repo, filename='model.safetensors'):
    return WeightFile(f'hf/{repo}/{filename}', f'https://huggingface.co/{repo}/resolve/main/{filename}')


# consumer -> (files, note). ``note`` says what works without files. Plugins add theirs with register_weights().
REQUIREMENTS = OrderedDict()


def register_weights(consumer, files, note=''):
    """Declare that ``consumer`` (e.g. ``'loss PerceptualGramLoss (vgg19)'``) needs ``files`` (WeightFile/str)."""
    REQUIREMENTS[consumer] = (tuple(f if isinstance(f, WeightFile) else WeightFile(f, '') for f in files), note)


_LPIPS_NOTE = "linear layers ship with the lpips package; pyiqa's {} is used instead if present"
for _name, _trunk, _file in [('lpips', TV_ALEXNET, 'LPIPS_v0.1_alex-df73285e.pth'),
                             ('lpips+', TV_ALEXNET, 'LPIPS_v0.1_alex-df73285e.pth'),
                             ('lpips-vgg', TV_VGG16, 'LPIPS_v0.1_vgg-a78928a0.pth'),
                             ('lpips-vgg+', TV_VGG16, 'LPIPS_v0.1_vgg-a78928a0.pth')]:
    register_weights(f'metric {_name}', [_trunk], _LPIPS_NOTE.format(_file))
for _name, _files in [
    ('stlpips', [_iqa('alex_shift_tolerant.pth')]),
    ('stlpips-vgg', [_iqa('vgg_shift_tolerant.pth')]),
    ('dists', [TV_VGG16, _iqa('DISTS_weights-f5e65c96.pth')]),
    ('pieapp', [_iqa('PieAPPv0.1-0937b014.pth')]),
    ('ckdn', [WeightFile('resnet50-19c8e357.pth', _TV + 'resnet50-19c8e357.pth'),
              _iqa('CKDN_model_best-38b27dc6.pth')]),
    ('niqe_matlab', [_iqa('niqe_matlab_params.mat')]),
    ('ilniqe', [_iqa('ILNIQE_templateModel.mat')]),
    ('brisque', [_iqa('brisque_svm_weights.pth')]),
    ('brisque_matlab', [_iqa('brisque_matlab.mat')]),
    ('nrqm', [_iqa('NRQM_model.mat')]),
    ('pi', [_iqa('NRQM_model.mat')]),
    ('musiq', [_iqa('musiq_koniq_ckpt-e95806b9.pth')]),
    ('musiq-ava', [_iqa('musiq_ava_ckpt-e8d3f067.pth')]),
    ('musiq-paq2piq', [_iqa('musiq_paq2piq_ckpt-364c0c84.pth')]),
    ('musiq-spaq', [_iqa('musiq_spaq_ckpt-358bb6af.pth')]),
    ('cnniqa', [_iqa('CNNIQA_koniq10k-e6f14c91.pth')]),
    ('dbcnn', [TV_VGG16, _iqa('DBCNN_scnn-7ea73d75.pth'), _iqa('DBCNN_KonIQ10k-2de81c0a.pth')]),
    ('paq2piq', [TV_RESNET18, _iqa('P2P_RoIPoolModel-fit.10.bs.120-ca69882e.pth')]),
    ('wadiqam_fr', [_iqa('WaDIQaM-kadid-f7541ea5.pth')]),
    ('wadiqam_nr', [_iqa('WaDIQaM-NR-koniq-aaffea29.pth')]),
    ('topiq_fr', [_hf('timm/resnet50.a1_in1k'), _iqa('cfanet_fr_kadid_res50-2c4cc61d.pth')]),
    ('topiq_nr', [_hf('timm/resnet50.a1_in1k'), _iqa('cfanet_nr_koniq_res50-9a73138b.pth')]),
    ('fid', [_iqa('pt_inception-2015-12-05-6726825d.pth')]),
    ('clipiqa', [WeightFile('RN50.pt', 'https://openaipublic.azureedge.net/clip/models/'
                            'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt')]),
]:
    register_weights(f'metric {_name}', _files)
register_weights('metric niqe', [], "built in: basicsr's niqe_pris_params.npz (niqe_modelparameters.mat in the "
                 'weights folder takes precedence)')

# ---------------------------------------------------------------------------------------------------------------
# Redirecting third-party download hooks to the weights folder.
#
# Each hook of a loaded package (pyiqa's load_file_from_url, torch.hub.load_state_dict_from_url as used by
# torchvision / timm / lpips, huggingface_hub downloads in timm, pyiqa's CLIP downloader, raw
# download_url_to_file) is replaced once by a wrapper. Outside ``offline_weights`` the wrapper calls the original;
# inside it resolves the file in the weights folder. Wrappers stay installed because modules imported while a
# block runs may copy them by name (``from torch.hub import load_state_dict_from_url``).
_PATCH_LOCK = threading.RLock()
_ACTIVE = []  # purposes of the offline_weights blocks currently open (innermost last)


def _url_name(url, file_name=None):
    return file_name or osp.basename(urlparse(url).path)


def _file_from_url(url, *args, file_name=None, **kwargs):
    # pyiqa.utils.download_util.load_file_from_url(url, model_dir, progress, file_name) -> local path
    return find_weight(_url_name(url, file_name), _ACTIVE[-1])


def _state_dict_from_url(url, model_dir=None, map_location=None, progress=True, check_hash=False, file_name=None,
                         weights_only=True):
    # torch.hub.load_state_dict_from_url (torchvision, timm and lpips ImageNet checkpoints)
    import torch
    path = find_weight(_url_name(url, file_name), _ACTIVE[-1])
    return torch.load(path, map_location=map_location or 'cpu', weights_only=True)


def _never_download(url, *args, **kwargs):
    # the last line of defence: anything that reaches a raw download fails with the file name
    name = _url_name(url)
    find_weight(name, _ACTIVE[-1])  # raises when missing
    raise MissingWeightsError(f'{_ACTIVE[-1]} tried to download {url} although {name} is in {weights_dir()}', name)


def _clip_download(url, *args, **kwargs):
    return find_weight(_url_name(url), _ACTIVE[-1])


def _hf_download(repo_id, filename, *args, **kwargs):
    rel = f'hf/{repo_id}/{filename}'
    try:
        return find_weight(rel, _ACTIVE[-1])
    except MissingWeightsError:
        # timm asks for model.safetensors first and falls back to pytorch_model.bin: let it, when that exists
        if filename.endswith('.safetensors') and osp.isfile(osp.join(weights_dir(), 'hf', repo_id,
                                                                     'pytorch_model.bin')):
            from huggingface_hub.errors import EntryNotFoundError
            raise EntryNotFoundError(rel)
        raise


_RESOLVERS = {'file_from_url': _file_from_url, 'state_dict_from_url': _state_dict_from_url,
              'never_download': _never_download, 'clip_download': _clip_download, 'hf_download': _hf_download}


def _wrap(orig, key):
    resolver = _RESOLVERS[key]

    def hook(*args, **kwargs):
        if _ACTIVE:
            return resolver(*args, **kwargs)
        return orig(*args, **kwargs)

    hook._irtk_orig = orig
    hook.__name__ = getattr(orig, '__name__', key)
    hook.__doc__ = getattr(orig, '__doc__', None)
    return hook


def _targets():
    """(module, attribute, resolver key) for every download hook of the loaded third-party packages."""
    out = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None:
            continue
        if mod_name.startswith('pyiqa'):
            for attr, key in (('load_file_from_url', 'file_from_url'), ('download_url_to_file', 'never_download'),
                              ('hf_hub_download', 'hf_download')):
                out.append((mod, attr, key))
            if mod_name.endswith(('clip_model', 'afineclip_model')):
                out.append((mod, '_download', 'clip_download'))
        elif mod_name.startswith(('torch.hub', 'torch.utils.model_zoo', 'torchvision', 'timm.', 'lpips',
                                  'basicsr.archs')):
            for attr, key in (('load_state_dict_from_url', 'state_dict_from_url'), ('load_url', 'state_dict_from_url'),
                              ('download_url_to_file', 'never_download'), ('hf_hub_download', 'hf_download')):
                out.append((mod, attr, key))
    return [(m, a, k) for m, a, k in out if callable(getattr(m, a, None))]


def _install_hooks():
    for mod, attr, key in _targets():
        fn = getattr(mod, attr)
        if not hasattr(fn, '_irtk_orig'):
            setattr(mod, attr, _wrap(fn, key))


@contextlib.contextmanager
def offline_weights(purpose):
    """Build third-party models inside this block: their weights come from :func:`weights_dir` or fail loudly.

    ``purpose`` names the consumer in the error (``'pyiqa metric lpips'``). Blocks are serialised by a lock.
    """
    import torch.hub  # noqa: F401  (make sure the hooks exist before patching them)
    if 'pyiqa' in sys.modules or 'timm' in sys.modules:  # timm's hub modules load lazily, inside pyiqa metrics
        import timm.models._builder  # noqa: F401
        import timm.models._hub  # noqa: F401
    if 'pyiqa' in sys.modules:  # so do pyiqa's CLIP loaders (CLIP-IQA, ...), which download with their own urllib
        import pyiqa.archs.afineclip_model  # noqa: F401
        import pyiqa.archs.clip_model  # noqa: F401
    with _PATCH_LOCK:
        _install_hooks()
        _ACTIVE.append(purpose)
        try:
            yield
        finally:
            _ACTIVE.pop()


def weights_report():
    """One row per (consumer, file) of :data:`REQUIREMENTS`, in their order, as the ``irtk-weights`` listing shows
    them: dicts with ``consumer``, ``file``, ``present``, ``path`` (in :func:`weights_dir`), ``source`` and ``note``;
    a consumer that needs no file has one row with ``file``, ``path`` and ``source`` None and ``present`` True."""
    rows = []
    folder = weights_dir()
    for consumer, (files, note) in REQUIREMENTS.items():
        if not files:
            rows.append({'consumer': consumer, 'file': None, 'present': True, 'path': None, 'source': None,
                         'note': note})
        for f in files:
            path = osp.join(folder, f.name)
            rows.append({'consumer': consumer, 'file': f.name, 'present': osp.isfile(path), 'path': path,
                         'source': f.source, 'note': note})
    return rows
