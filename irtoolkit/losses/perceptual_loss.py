"""Perceptual + Gram-matrix style loss on frozen ImageNet VGG features, weights from the irtoolkit weights folder.

Perceptual loss: Johnson, Alahi, Fei-Fei, "Perceptual Losses for Real-Time Style Transfer and Super-Resolution",
ECCV 2016 — distance between VGG feature maps of output and target. Style loss: Gatys, Ecker, Bethge, "Image Style
Transfer Using Convolutional Neural Networks", CVPR 2016 — distance between Gram matrices
``G = F F^T / (C H W)`` of the same feature maps (F: C x HW).

Same options as basicsr's ``PerceptualLoss`` (``layer_weights``, ``vgg_type``, ``use_input_norm``,
``range_norm``, ``perceptual_weight``, ``style_weight``, ``criterion``), so a BasicSR recipe ports by renaming
the type; unlike it, the VGG comes from ``$IRTOOLKIT_WEIGHTS/<torchvision file name>`` (``vgg19-dcbb9e9d.pth``,
``vgg16-397923af.pth``) or ``weights_file``, nothing is downloaded, and a missing file is an error naming it —
there is no random-VGG fallback.

Shapes: ``forward(x, gt)`` with (B, 3, H, W) RGB in [0, 1] (or [-1, 1] with ``range_norm``); returns
``(perceptual, style)`` scalars, ``None`` for a term whose weight is 0 (RestorationModel logs both).
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.utils.registry import LOSS_REGISTRY
from irtoolkit.utils.weights import TV_VGG16, TV_VGG19, find_weight, register_weights

VGG_FILES = {'vgg19': TV_VGG19.name, 'vgg16': TV_VGG16.name}
_VGG_CFG = {'vgg16': (2, 2, 3, 3, 3), 'vgg19': (2, 2, 4, 4, 4)}  # conv layers per block
_TV_CFG = {'vgg16': 'D', 'vgg19': 'E'}  # torchvision's names of the two configurations
register_weights('loss PerceptualGramLoss (vgg19)', [TV_VGG19])
register_weights('loss PerceptualGramLoss (vgg16)', [TV_VGG16])


def vgg_layer_names(vgg_type):
    """Names of torchvision's ``vgg*.features`` modules in order: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, n_conv in enumerate(_VGG_CFG[vgg_type], start=1):
        for i in range(1, n_conv + 1):
            names += [f'conv{block}_{i}', f'relu{block}_{i}']
        names.append(f'pool{block}')
    return names


def load_vgg_features(vgg_type='vgg19', weights_file=None, purpose=None):
    """torchvision's ``vgg*.features`` with ImageNet weights from the weights folder (frozen, eval mode)."""
    import torchvision
    if vgg_type not in VGG_FILES:
        raise ValueError(f'vgg_type must be one of {", ".join(VGG_FILES)}, got {vgg_type!r}')
    path = find_weight(weights_file or VGG_FILES[vgg_type], purpose or f'perceptual loss ({vgg_type})')
    state = torch.load(path, map_location='cpu', weights_only=True)
    state = state.get('params', state) if isinstance(state, dict) else state
    # only the convolutional trunk: building the whole model would initialise 120M unused classifier weights
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[_TV_CFG[vgg_type]])
    feat_state = {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
    if not feat_state:
        raise ValueError(f'{path}: no features.* keys; expected a torchvision {vgg_type} state dict')
    features.load_state_dict(feat_state, strict=True)
    return features.eval().requires_grad_(False)


def gram_matrix(feat):
    """(B, C, H, W) -> (B, C, C), normalised by C*H*W."""
    b, c, h, w = feat.shape
    f = feat.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


@LOSS_REGISTRY.register()
class PerceptualGramLoss(nn.Module):
    """Perceptual + Gram style loss on frozen VGG features (see the module docstring).

    Args:
        layer_weights: ``{layer name: weight}``, e.g. ``{conv5_4: 1.0}`` or ``{relu2_2: 1, relu3_4: 1}``.
        vgg_type: ``vgg19`` or ``vgg16``.
        use_input_norm: normalise with ImageNet mean/std (inputs in [0, 1]).
        range_norm: map inputs from [-1, 1] to [0, 1] first.
        perceptual_weight / style_weight: weights of the two terms (0 disables a term).
        criterion: ``l1``, ``l2`` (MSE) or ``fro`` (Frobenius norm of the difference).
        weights_file: file name in the weights folder or an absolute path (default: torchvision's name).
    """

    def __init__(self, layer_weights=None, vgg_type='vgg19', use_input_norm=True, range_norm=False,
                 perceptual_weight=1.0, style_weight=0.0, criterion='l1', weights_file=None):
        super().__init__()
        self.layer_weights = dict(layer_weights or {'conv5_4': 1.0})
        if vgg_type not in _VGG_CFG:
            raise ValueError(f'PerceptualGramLoss: vgg_type must be one of {", ".join(_VGG_CFG)}, got {vgg_type!r}')
        names = vgg_layer_names(vgg_type)
        unknown = [n for n in self.layer_weights if n not in names]
        if unknown:
            raise ValueError(f'PerceptualGramLoss: unknown {vgg_type} layers {unknown}; e.g. {names[:6]} ...')
        if criterion not in ('l1', 'l2', 'fro'):
            raise ValueError(f'PerceptualGramLoss: criterion must be l1, l2 or fro, got {criterion!r}')
        features = load_vgg_features(vgg_type, weights_file, f'loss PerceptualGramLoss ({vgg_type})')
        last = max(names.index(n) for n in self.layer_weights)
        self.vgg = features[:last + 1]  # nothing deeper than the deepest layer used
        self.index_to_name = {names.index(n): n for n in self.layer_weights}
        self.use_input_norm, self.range_norm = use_input_norm, range_norm
        self.perceptual_weight, self.style_weight, self.criterion = perceptual_weight, style_weight, criterion
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode=True):  # the VGG stays frozen in eval mode whatever the model does
        super().train(mode)
        self.vgg.eval()
        return self

    def features(self, x):
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in self.index_to_name:
                out[self.index_to_name[i]] = x
        return out

    def distance(self, a, b):
        if self.criterion == 'l1':
            return F.l1_loss(a, b)
        if self.criterion == 'l2':
            return F.mse_loss(a, b)
        return torch.linalg.norm((a - b).flatten(1), dim=1).mean()  # 'fro', per sample

    def forward(self, x, gt):
        x_feat = self.features(x)
        with torch.no_grad():
            gt_feat = self.features(gt.detach())
        percep = style = None
        if self.perceptual_weight > 0:
            percep = sum(self.distance(x_feat[k], gt_feat[k]) * w for k, w in self.layer_weights.items())
            percep = percep * self.perceptual_weight
        if self.style_weight > 0:
            style = sum(self.distance(gram_matrix(x_feat[k]), gram_matrix(gt_feat[k])) * w
                        for k, w in self.layer_weights.items())
            style = style * self.style_weight
        return percep, style
