"""Models with basicsr's interface run unchanged in irtoolkit's runner: basicsr's SRModel and ESRGANModel, and a
plugin file that defines an SRModel subclass with its own arch, as published BasicSR-based projects ship them.
Each trains, validates with its own ``validation``, saves, and resumes exactly with ``--auto_resume``."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from irtk_testutils import REPO, write_options

from irtoolkit.data.tiny import make_tiny_pairs
from irtoolkit.engine.basicsr_models import has_basicsr_interface
from irtoolkit.engine.runner import train as run_train

SR_NET = {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2}

PLUGIN = textwrap.dedent('''
    """A BasicSR-based project's files, as published: its own arch and an SRModel subclass."""
    from torch import nn
    from basicsr.models.sr_model import SRModel
    from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY


    @ARCH_REGISTRY.register()
    class PluginUpNet(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 12, 3, padding=1),
                                      nn.PixelShuffle(2))

        def forward(self, x):
            return self.body(x)


    @MODEL_REGISTRY.register()
    class PluginSRModel(SRModel):
        """Counts its own steps, to show the subclass (not SRModel) is what runs."""

        def optimize_parameters(self, current_iter):
            super().optimize_parameters(current_iter)
            self.log_dict['plugin_steps'] = float(current_iter)
''')


@pytest.fixture(scope='module')
def sr_data(tmp_path_factory):
    """x2 super-resolution pairs: 64 px GT, 32 px bicubic LQ."""
    return make_tiny_pairs(str(tmp_path_factory.mktemp('sr')), n_train=8, n_val=2, size=64, scale=2)


def sr_recipe(data, name, total_iter=8, model_type='SRModel', network=None):
    """A recipe in BasicSR's own layout (its dataset, metric and scheduler names)."""
    def split(s):
        return {'name': f'tiny_{s}', 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'},
                'dataroot_gt': f'{data}/{s}/gt', 'dataroot_lq': f'{data}/{s}/lq'}
    return {
        'name': name, 'model_type': model_type, 'scale': 2, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'train': {**split('train'), 'gt_size': 32, 'use_hflip': True, 'use_rot': True,
                               'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1},
                     'val': split('val')},
        'network_g': network or SR_NET,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.9, 'total_iter': total_iter, 'warmup_iter': -1,
                  'optim_g': {'type': 'Adam', 'lr': 2e-4, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [6], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 4, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': False}}},
        'logger': {'print_freq': 2, 'save_checkpoint_freq': 4, 'use_tb_logger': False},
    }


def esrgan_recipe(data, name, total_iter=8):
    opt = sr_recipe(data, name, total_iter, 'ESRGANModel', {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3,
                                                            'num_feat': 8, 'num_block': 1, 'num_grow_ch': 8,
                                                            'scale': 2})
    opt['network_d'] = {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8}
    opt['train'].update(optim_d={'type': 'Adam', 'lr': 1e-4, 'betas': [0.9, 0.99]}, net_d_iters=1, net_d_init_iters=0,
                        gan_opt={'type': 'GANLoss', 'gan_type': 'vanilla', 'loss_weight': 0.005})
    return opt


def _weights(exp, name='net_g'):
    return torch.load(f'{exp}/models/{name}_latest.pth', weights_only=True)


def _train_and_resume(opt, in_tmp, split_at=4):
    """``opt`` to the end in one run, and in two runs (stop at ``split_at``, then ``--auto_resume``)."""
    full = write_options(dict(opt, name='full'), in_tmp / 'full.yml')
    run_train(['-opt', full])
    part = write_options(dict(opt, name='part'), in_tmp / 'part.yml')
    run_train(['-opt', part, '--force_yml', f'train.total_iter={split_at}'])
    run_train(['-opt', part, '--auto_resume'])
    return in_tmp / 'experiments' / 'full', in_tmp / 'experiments' / 'part'


def _assert_same(a, b):
    for key in a:
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k, (a[key][k].float() - b[key][k].float()).abs().max())


def test_interface_is_told_by_signature_not_name():
    from basicsr.models.sr_model import SRModel
    from basicsr.models.swinir_model import SwinIRModel

    from irtoolkit.models.restoration_model import RestorationModel
    assert has_basicsr_interface(SRModel) and has_basicsr_interface(SwinIRModel)
    assert not has_basicsr_interface(RestorationModel)


def test_basicsr_srmodel_trains_validates_saves_and_resumes_exactly(sr_data, in_tmp):
    full, part = _train_and_resume(sr_recipe(sr_data, 'sr'), in_tmp)
    log = next(full.glob('train_full_*.log')).read_text()
    assert 'Validation tiny_val' in log and '# psnr:' in log  # basicsr's own validation, in the run's log
    assert (full / 'models/net_g_4.pth').is_file() and (full / 'training_states/8.state').is_file()
    state = torch.load(full / 'training_states/4.state', weights_only=True)
    assert {'optimizers', 'schedulers', 'rng', 'batch_in_epoch'} <= set(state) and state['batch_in_epoch'] == 4
    a, b = _weights(full), _weights(part)
    assert set(a) == {'params', 'params_ema'}
    _assert_same(a, b)
    assert not list(full.rglob('*.tmp.*'))  # checkpoints written atomically


def test_basicsr_esrgan_model_resumes_generator_and_discriminator(sr_data, in_tmp):
    full, part = _train_and_resume(esrgan_recipe(sr_data, 'gan'), in_tmp)
    _assert_same(_weights(full), _weights(part))
    _assert_same(_weights(full, 'net_d'), _weights(part, 'net_d'))
    log = next(part.glob('train_part_*.log')).read_text()
    assert 'l_d_real' in log and 'l_g_gan' in log


def test_plugin_srmodel_subclass_with_its_own_arch(sr_data, in_tmp):
    (in_tmp / 'my_project.py').write_text(PLUGIN)
    opt = sr_recipe(sr_data, 'plug', model_type='PluginSRModel', network={'type': 'PluginUpNet', 'width': 8})
    opt['plugins'] = ['my_project.py']
    full, part = _train_and_resume(opt, in_tmp)
    log = next(full.glob('train_full_*.log')).read_text()
    assert 'plugin_steps: 8' in log and '# psnr:' in log
    _assert_same(_weights(full), _weights(part))


def test_finished_run_says_complete_and_a_larger_total_continues(sr_data, in_tmp):
    path = write_options(sr_recipe(sr_data, 'done', total_iter=4), in_tmp / 'done.yml')
    run_train(['-opt', path])
    from irtoolkit.train import main
    main(['-opt', path, '--auto_resume'])  # returns: exit status 0
    log = sorted((in_tmp / 'experiments/done').glob('train_*.log'))[-1].read_text()
    assert 'Training is complete: iter 4 of 4' in log
    run_train(['-opt', path, '--auto_resume', '--force_yml', 'train.total_iter=8'])
    assert (in_tmp / 'experiments/done/training_states/8.state').is_file()


@pytest.mark.slow
def test_basicsr_srmodel_under_torchrun(sr_data, in_tmp):
    path = write_options(sr_recipe(sr_data, 'ddp', total_iter=4), in_tmp / 'ddp.yml')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29687',
           os.path.join(REPO, 'irtoolkit/train.py'), '-opt', path, '--launcher', 'pytorch']
    proc = subprocess.run(cmd, cwd=in_tmp, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (in_tmp / 'experiments/ddp/models/net_g_latest.pth').is_file()
