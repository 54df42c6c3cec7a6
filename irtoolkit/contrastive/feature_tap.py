"""FeatureTap: intermediate features of any network, by module name, with an early exit.

CUT (Park et al., ECCV 2020) reuses the generator's encoder as the contrastive feature extractor through an
``encode_only`` flag inside its own generator. To keep irtoolkit's contrastive losses backbone-agnostic, the
same effect is obtained from outside the network: forward hooks on ``named_modules()`` entries collect the
outputs, and once every requested module has fired a private exception ends the forward pass, so the decoder
of a U-Net never runs.

Names are ``named_modules()`` names of the bare network (e.g. NAFNet: ``intro``, ``encoders.0``, ``downs.1``,
``middle_blks``; PatchGANDiscriminator: ``body.0`` ...) plus the special name ``input`` (the tensor passed in).
Modules that return a tuple/list (transformer blocks, some U-Net stages) contribute ``select(output)``, by
default its first element.

Caveat (NAFNet and other padding archs): features are those of the padded input; coordinates from
:mod:`irtoolkit.contrastive.samplers` are normalised, so they stay consistent when every layer is padded the
same way; use crop sizes that are multiples of the arch's padding size to avoid a border offset.
"""
import difflib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ['FeatureTap', 'tap_features']


class _StopForward(Exception):
    """Raised by the last hook to end the forward pass early."""


def _bare(net):
    return net.module if isinstance(net, (DistributedDataParallel, nn.DataParallel)) else net


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class FeatureTap:
    """Return the outputs of ``layers`` (module names, in that order) of ``net`` for one input.

    Args:
        net: any ``nn.Module`` (DDP wrappers are unwrapped for name look-up; the forward runs the wrapper).
        layers: list of module names; ``'input'`` stands for the network's input tensor.
        stop_after_last: end the forward once all requested modules have produced an output.
        select: callable applied to tuple/list outputs (default: the first element).

    Call: ``tap(x, *args, **kwargs) -> list[Tensor]`` in the order of ``layers``; shapes are the modules'
    outputs, e.g. NAFNet ``encoders.1`` -> (B, 2*width, H/2, W/2). With ``stop_after_last=False`` the network's
    own output is kept in ``tap.output`` (one forward gives the restored image and its features).
    Unknown names raise ``ValueError`` with the closest module names, at construction.
    """

    def __init__(self, net, layers, stop_after_last=True, select=None):
        if isinstance(layers, str) or not layers:
            raise ValueError(f'FeatureTap: layers must be a non-empty list of module names, got {layers!r}')
        self.net = net
        self.layers = list(layers)
        self.stop_after_last = stop_after_last
        self.select = select or _first
        modules = dict(_bare(net).named_modules())
        self._modules = {}
        for i, name in enumerate(self.layers):
            if name == 'input':
                continue
            if name not in modules or name == '':
                close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
                raise ValueError(f'FeatureTap: layers[{i}] {name!r} is not a module of {type(_bare(net)).__name__}'
                                 f'; closest: {", ".join(close) or "none"}')
            self._modules[name] = modules[name]
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f'FeatureTap: duplicate layer names in {self.layers}')
        self.calls = 0  # hook calls of the last forward (tests use it to check the early exit)
        self.output = None

    def __call__(self, x, *args, **kwargs):
        out = {}
        if 'input' in self.layers:
            out['input'] = x
        wanted = len(self.layers)
        handles = []
        self.calls = 0

        def make_hook(name):
            def hook(_module, _inputs, output):
                self.calls += 1
                if name not in out:  # a module called twice contributes its first call
                    out[name] = self.select(output)
                if self.stop_after_last and len(out) == wanted:
                    raise _StopForward

            return hook

        for name, module in self._modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        self.output = None
        try:
            if len(out) < wanted:
                self.output = self.net(x, *args, **kwargs)  # kept when the forward completes
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.layers if n not in out]
        if missing:
            raise RuntimeError(f'FeatureTap: modules {missing} of {type(_bare(self.net)).__name__} did not run in '
                               'the forward pass')
        return [out[n] for n in self.layers]

    @torch.no_grad()
    def channels(self, x):
        """Channel count of every tapped feature for a dry-run input ``x`` (used to size projection heads)."""
        return [f.shape[1] for f in self(x)]


def tap_features(net, x, layers, **kwargs):
    """One-shot helper: ``FeatureTap(net, layers, **kwargs)(x)``."""
    return FeatureTap(net, layers, **kwargs)(x)
