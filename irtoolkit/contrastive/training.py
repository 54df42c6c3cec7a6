"""Small pieces shared by the contrastive models: per-phase gradient switches, patch embedding and the
discriminator's loss."""
from irtoolkit.contrastive.samplers import gather

__all__ = ['set_requires_grad', 'embed_patches', 'discriminator_loss']


def set_requires_grad(nets, flag):
    """Switch ``requires_grad`` of every parameter of ``nets`` (a module or a list; ``None`` entries skipped)."""
    for net in nets if isinstance(nets, (list, tuple)) else [nets]:
        if net is not None:
            for p in net.parameters():
                p.requires_grad_(flag)


def embed_patches(feats, coords, heads):
    """Gather every layer's features at ``coords`` (B, P, 2) and project them: list of (B, P, D), unit norm."""
    return heads([gather(f, coords) for f in feats])


def discriminator_loss(gan_loss, net_d, real, fake):
    """The discriminator's GAN loss, real images as real and (detached) generated images as fake, halved."""
    return 0.5 * (gan_loss(net_d(real), True, is_disc=True) + gan_loss(net_d(fake.detach()), False, is_disc=True))
