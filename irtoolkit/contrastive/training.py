"""Small pieces shared by the contrastive models: patch embedding and the discriminator's loss (which networks
learn in a step is :meth:`irtoolkit.models.base_model.BaseModel.learning_only`'s business)."""
from irtoolkit.contrastive.samplers import gather

__all__ = ['embed_patches', 'discriminator_loss']


def embed_patches(feats, coords, heads):
    """Gather every layer's features at ``coords`` (B, P, 2) and project them: list of (B, P, D), unit norm."""
    return heads([gather(f, coords) for f in feats])


def discriminator_loss(gan_loss, net_d, real, fake):
    """The discriminator's GAN loss, real images as real and (detached) generated images as fake, halved."""
    return 0.5 * (gan_loss(net_d(real), True, is_disc=True) + gan_loss(net_d(fake.detach()), False, is_disc=True))
