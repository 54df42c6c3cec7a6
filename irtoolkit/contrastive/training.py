"""Small pieces shared by the contrastive models: per-phase gradient switches, patch embedding, and DDP wrapping of
the auxiliary trainable modules (heads, projectors, negative generators) that ``BaseModel.build_net`` does not
build."""
import inspect

from torch.nn.parallel import DistributedDataParallel

from irtoolkit.contrastive.samplers import gather

__all__ = ['set_requires_grad', 'embed_patches', 'discriminator_loss', 'ddp_wrap']

# torch >= 2.14 deprecates ``broadcast_buffers`` for ``forward_sync_buffers``
_NO_FORWARD_BUFFER_SYNC = ({'forward_sync_buffers': False}
                           if 'forward_sync_buffers' in inspect.signature(DistributedDataParallel).parameters
                           else {'broadcast_buffers': False})


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


def ddp_wrap(net, opt, device):
    """``net`` in ``DistributedDataParallel`` when ``opt['dist']`` and it has trainable parameters (as
    ``BaseModel.build_net`` does for registered networks), else ``net`` itself.

    Without it, each rank would step its own copy of a head with its own gradients and the copies would drift
    apart. ``device_ids``: ``[device.index]`` on CUDA, ``None`` on CPU (gloo). Buffers are synchronised once at
    construction but not at every forward: the auxiliary modules keep only per-rank state there (embedding queues),
    no normalisation statistics. Checkpoints
    keep the bare module's key names because ``BaseModel`` saves and loads through ``bare()``; call the wrapper for
    every forward whose output receives gradients, and ``bare(net)`` for other methods (queues, momentum copies).
    """
    if not opt.get('dist') or not any(p.requires_grad for p in net.parameters()):
        return net
    ids = [device.index] if device.type == 'cuda' else None
    return DistributedDataParallel(net, device_ids=ids, **_NO_FORWARD_BUFFER_SYNC,
                                   find_unused_parameters=opt.get('find_unused_parameters', False))
