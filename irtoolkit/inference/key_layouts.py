"""Architectures irtoolkit recognises by the key names and shapes of a state dict, for those spandrel does not know.

spandrel (0.4.2) detects NAFNet, KBNet, Uformer, SwinIR and many others (:mod:`irtoolkit.inference.recognise`), but
not Restormer (only its non-commercial extra package does). A layout here reads the constructor arguments of one of
irtoolkit's registered archs off the state dict, the way spandrel's ``Architecture.load`` does: counts of numbered
blocks, channel counts from weight shapes, optional parts from the presence of keys. The caller builds the arch from
them and loads the state dict strictly, so a layout that reads an argument wrongly fails there, never silently.

A layout is ``detect(state) -> bool`` and ``arguments(state) -> {type: <registered arch>, ...}``; :data:`LAYOUTS`
lists them in the order they are tried.
"""

__all__ = ['LAYOUTS', 'seq_len', 'restormer_detect', 'restormer_arguments']


def seq_len(state, prefix):
    """How many numbered children ``prefix.<i>`` the state dict has (the largest ``i`` plus one; 0 for none)."""
    start = prefix + '.'
    found = [k[len(start):].split('.', 1)[0] for k in state if k.startswith(start)]
    return max((int(i) + 1 for i in found if i.isdigit()), default=0)


# Restormer (Zamir et al., CVPR 2022; irtoolkit.archs.restormer_arch): the official key names
RESTORMER_KEYS = ('patch_embed.proj.weight', 'encoder_level1.0.attn.temperature',
                  'encoder_level1.0.ffn.project_in.weight', 'down1_2.body.0.weight', 'latent.0.attn.qkv.weight',
                  'up4_3.body.0.weight', 'reduce_chan_level3.weight', 'decoder_level1.0.norm1.body.weight',
                  'refinement.0.attn.temperature', 'output.weight')
RESTORMER_LEVELS = ('encoder_level1', 'encoder_level2', 'encoder_level3', 'latent')
# GDFN's hidden width is int(dim * ffn_expansion_factor): factors the papers use, tried before one read off the shapes
COMMON_FFN_FACTORS = (2.66, 2.0, 1.5, 3.0, 4.0, 1.0)


def restormer_detect(state):
    """Restormer's keys, and not KBNet_l's (the same U-Net with ``ffn.qkv``: spandrel knows that one)."""
    return all(k in state for k in RESTORMER_KEYS) and 'latent.0.ffn.qkv.weight' not in state


def _ffn_expansion_factor(state, dim):
    """The factor f with int(d * f) == the GDFN hidden width at every level (widths dim, 2dim, 4dim, 8dim and the
    2dim refinement); the common ones first, so an official 2.66 reads back as 2.66."""
    levels = [(prefix, dim * 2**i) for i, prefix in enumerate(RESTORMER_LEVELS)] + [('refinement', 2 * dim)]
    hidden = [(d, state[f'{prefix}.0.ffn.project_out.weight'].shape[1]) for prefix, d in levels]
    first = hidden[0][1] / dim
    for f in COMMON_FFN_FACTORS + (round(first, 2), round(first, 3), (hidden[0][1] + 0.5) / dim):
        if all(int(d * f) == h for d, h in hidden):
            return f
    return first  # no factor fits every level: the strict load names the shape that differs


def restormer_arguments(state):
    """``{type: Restormer, ...}`` of a Restormer state dict (every constructor argument of
    :class:`irtoolkit.archs.restormer_arch.Restormer`)."""
    embed = state['patch_embed.proj.weight']  # (dim, inp_channels, 3, 3)
    dim = int(embed.shape[0])
    return {
        'type': 'Restormer',
        'inp_channels': int(embed.shape[1]),
        'out_channels': int(state['output.weight'].shape[0]),
        'dim': dim,
        'num_blocks': [seq_len(state, prefix) for prefix in RESTORMER_LEVELS],
        'num_refinement_blocks': seq_len(state, 'refinement'),
        'heads': [int(state[f'{prefix}.0.attn.temperature'].shape[0]) for prefix in RESTORMER_LEVELS],
        'ffn_expansion_factor': _ffn_expansion_factor(state, dim),
        'bias': 'encoder_level1.0.attn.qkv.bias' in state,
        'LayerNorm_type': 'WithBias' if 'encoder_level1.0.norm1.body.bias' in state else 'BiasFree',
        'dual_pixel_task': 'skip_conv.weight' in state,
    }


LAYOUTS = (('Restormer', restormer_detect, restormer_arguments), )
