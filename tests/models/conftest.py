"""Fixtures of the model tests."""
import pytest
import torch

from irtoolkit.utils.registry import build_network

TEACHER_NET = {'type': 'NAFNet', 'width': 8, 'middle_blk_num': 1, 'enc_blk_nums': [1, 1], 'dec_blk_nums': [1, 1]}
TEACHER_LABELS = ('haze', 'rain', 'blur')


@pytest.fixture
def teachers(tmp_path):
    """Uni-Removal teachers: one checkpoint per degradation (distinct random weights: stand-ins for trained
    teachers), ``{label: path}``."""
    paths = {}
    for i, lab in enumerate(TEACHER_LABELS):
        torch.manual_seed(100 + i)
        net = build_network(TEACHER_NET)
        for p in net.parameters():  # NAFNet's zero-initialised scales would make every teacher the identity
            p.data.add_(0.05 * torch.randn_like(p))
        paths[lab] = str(tmp_path / f'teacher_{lab}.pth')
        torch.save({'params': net.state_dict()}, paths[lab])
    return paths
