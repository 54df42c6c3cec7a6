"""The feature encoder of a contrastive loss, chosen in options: the generator's own layers, the
discriminator's, a VGG, or any timm model built with ``features_only``.

Options (a mapping, e.g. ``train.<loss>.encoder`` in a recipe)::

    {type: self, layers: [intro, encoders.0, encoders.1]}        # the generator (CUT, CDD-GAN, NLCL location)
    {type: disc, layers: [input, body.0, body.2, body.5]}        # the discriminator (NLCL layer contrast)
    {type: vgg, arch: vgg19, layers: [relu1_1, relu2_1, relu3_1], weight_file: vgg19-dcbb9e9d.pth}
    {type: timm, model: resnet18, out_indices: [1, 2, 3], weight_file: resnet18.a1_in1k.safetensors}

VGG and timm weights come from :func:`irtoolkit.utils.weights.find_weight` (the local weights folder); they are
never downloaded. ``pretrained: false`` builds a randomly initialised, frozen encoder instead — a documented
ablation (random features), never a silent fallback. External encoders are frozen and in eval mode; their
input is an RGB image in [0, 1], normalised with ImageNet statistics inside.
"""
import torch
from torch import nn

from irtoolkit.contrastive.feature_tap import FeatureTap
from irtoolkit.utils.weights import find_weight

__all__ = ['ContrastiveEncoder', 'build_encoder', 'vgg_layer_names']

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_VGG_CFG = {'vgg11': 'A', 'vgg13': 'B', 'vgg16': 'D', 'vgg19': 'E'}
# torchvision's file names; a torchvision ImageNet checkpoint (or any state dict with ``features.*``) works
_VGG_FILES = {'vgg11': 'vgg11-8a719046.pth', 'vgg13': 'vgg13-19584684.pth', 'vgg16': 'vgg16-397923af.pth',
              'vgg19': 'vgg19-dcbb9e9d.pth'}


def vgg_layer_names(features):
    """Names ``conv1_1, relu1_1, ..., pool1, conv2_1, ...`` for a torchvision VGG ``features`` Sequential."""
    names, block, idx = [], 1, 1
    for m in features:
        if isinstance(m, nn.Conv2d):
            names.append(f'conv{block}_{idx}')
        elif isinstance(m, nn.ReLU):
            names.append(f'relu{block}_{idx}')
            idx += 1
        elif isinstance(m, nn.MaxPool2d):
            names.append(f'pool{block}')
            block, idx = block + 1, 1
        else:
            names.append(f'{type(m).__name__.lower()}{block}_{idx}')
    return names


class _Normalised(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer('mean', torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class ContrastiveEncoder(nn.Module):
    """Callable ``encoder(x) -> list[(B, C_l, H_l, W_l)]``; ``channels()`` gives C_l by a dry run.

    For ``self``/``disc`` the live network is tapped (gradients flow into it unless the caller freezes it); the
    network is not a sub-module here (it is owned, saved and optimised by the model).
    """

    def __init__(self, kind, layers=None, net=None, external=None, probe_size=64):
        super().__init__()
        self.kind, self.layers, self.probe_size = kind, list(layers or []), probe_size
        if kind in ('self', 'disc'):
            object.__setattr__(self, '_live', net)  # not registered: not saved or moved with the encoder
            self.tap = FeatureTap(net, self.layers)
            self.external = None
        else:
            self.external = external
            self.tap = None

    def train(self, mode=True):
        super().train(mode)
        if self.external is not None:  # frozen statistics (BatchNorm in timm models) stay in eval mode
            self.external.eval()
        return self

    def forward(self, x):
        if self.tap is not None:
            return self.tap(x)
        return list(self.external(x))

    @torch.no_grad()
    def channels(self, in_channels=3):
        ref = next(iter(self._live.parameters())) if self.tap is not None else next(iter(self.external.buffers()))
        probe = torch.zeros(1, in_channels, self.probe_size, self.probe_size, device=ref.device, dtype=ref.dtype)
        net = self._live if self.tap is not None else self.external
        was = net.training
        net.eval()
        try:
            return [f.shape[1] for f in self(probe)]
        finally:
            net.train(was)


class _VGGFeatures(nn.Module):
    def __init__(self, arch, layers, weight_file, pretrained):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers
        if arch not in _VGG_CFG:
            raise ValueError(f'encoder.arch: expected vgg11/13/16/19, got {arch!r}')
        features = make_layers(cfgs[_VGG_CFG[arch]], batch_norm=False)  # the conv trunk only (no 100M-param head)
        if pretrained:
            path = find_weight(weight_file or _VGG_FILES[arch], f'contrastive encoder {arch}')
            state = torch.load(path, map_location='cpu', weights_only=True)
            state = {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
            features.load_state_dict(state)
        names = vgg_layer_names(features)
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f'encoder.layers: {unknown} are not {arch} layers; valid: {", ".join(names)}')
        last = max(names.index(n) for n in layers)
        self.features = features[:last + 1]  # drop what no requested layer needs
        self.index = [names.index(n) for n in layers]

    def forward(self, x):
        out, keep = {}, set(self.index)
        for i, m in enumerate(self.features):
            x = m(x)
            if i in keep:
                out[i] = x
        return [out[i] for i in self.index]


def _timm_features(model, out_indices, weight_file, pretrained):
    import timm
    kwargs = dict(features_only=True)
    if out_indices is not None:
        kwargs['out_indices'] = tuple(out_indices)
    if pretrained:
        if not weight_file:
            raise ValueError(f'encoder.weight_file: needed for timm model {model!r} (irtoolkit never downloads)')
        path = find_weight(weight_file, f'contrastive encoder timm/{model}')
        return timm.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)
    return timm.create_model(model, pretrained=False, **kwargs)


def build_encoder(opt, generator=None, discriminator=None, where='encoder'):
    """A :class:`ContrastiveEncoder` from options (see the module docstring); ``where`` names the option key."""
    opt = dict(opt or {'type': 'self'})
    kind = opt.pop('type', 'self')
    layers = opt.pop('layers', None)
    probe = opt.pop('probe_size', 64)
    if kind in ('self', 'disc'):
        net = generator if kind == 'self' else discriminator
        if net is None:
            raise ValueError(f'{where}.type: {kind!r} needs a {"generator" if kind == "self" else "discriminator"}'
                             ' but the model has none for this loss')
        if not layers:
            raise ValueError(f'{where}.layers: missing (module names of the {kind} network)')
        if opt:
            raise ValueError(f'{where}: unknown keys {sorted(opt)} for type {kind}')
        try:
            return ContrastiveEncoder(kind, layers, net=net, probe_size=probe)
        except ValueError as err:
            raise ValueError(f'{where}.layers: {err}') from None
    pretrained = opt.pop('pretrained', True)
    weight_file = opt.pop('weight_file', None)
    if kind == 'vgg':
        arch = opt.pop('arch', 'vgg19')
        if opt:
            raise ValueError(f'{where}: unknown keys {sorted(opt)} for type vgg')
        net = _VGGFeatures(arch, layers or ['relu1_1', 'relu2_1', 'relu3_1', 'relu4_1'], weight_file, pretrained)
    elif kind == 'timm':
        model = opt.pop('model', None)
        if not model:
            raise ValueError(f'{where}.model: missing (a timm model name, e.g. resnet18)')
        out_indices = opt.pop('out_indices', layers)
        if opt:
            raise ValueError(f'{where}: unknown keys {sorted(opt)} for type timm')
        net = _timm_features(model, out_indices, weight_file, pretrained)
    else:
        raise ValueError(f'{where}.type: unknown encoder {kind!r}; use self, disc, vgg or timm')
    external = _Normalised(net).eval().requires_grad_(False)
    return ContrastiveEncoder(kind, layers, external=external, probe_size=probe)
