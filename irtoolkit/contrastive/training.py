"""Small pieces shared by the contrastive models: per-phase gradient switches and patch embedding."""
from irtoolkit.contrastive.samplers import gather

__all__ = ['set_requires_grad', 'embed_patches']


def set_requires_grad(nets, flag):
    """Switch ``requires_grad`` of every parameter of ``nets`` (a module or a list; ``None`` entries skipped)."""
    for net in nets if isinstance(nets, (list, tuple)) else [nets]:
        if net is not None:
            for p in net.parameters():
                p.requires_grad_(flag)


def embed_patches(feats, coords, heads):
    """Gather every layer's features at ``coords`` (B, P, 2) and project them: list of (B, P, D), unit norm."""
    return heads([gather(f, coords) for f in feats])
