"""Models with basicsr's interface run unchanged in irtoolkit's runner: basicsr's SRModel, SwinIRModel, ESRGANModel,
RealESRNetModel and RealESRGANModel (with its RealESRGANDataset, on the CPU), and a plugin file that defines an
SRModel subclass with its own arch, as published BasicSR-based projects ship them. Each trains, validates with its own
``validation``, saves, and resumes exactly with ``--auto_resume`` (Real-ESRGAN's training-pair queue included); SRModel
and RealESRNetModel also under torchrun."""
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from irtk_testutils import REPO, free_port, write_options

from irtoolkit.data.tiny import make_tiny_pairs
from irtoolkit.engine.basicsr_models import attribute_snapshot, has_basicsr_interface, training_attributes
from irtoolkit.engine.runner import train as run_train
from irtoolkit.utils.errors import OptionError

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


# Real-ESRGAN's recipes (xinntao/Real-ESRGAN options/train_realesrnet_x4plus.yml, train_realesrgan_x4plus.yml; gt_usm
# is RealESRNetModel's key), degradation settings unchanged: the model synthesises LQ from GT in feed_data (two
# degradation rounds: blur, resize, noise, JPEG; a final sinc filter).
REALESRGAN_DEGRADATION = {
    'gt_usm': True, 'resize_prob': [0.2, 0.7, 0.1], 'resize_range': [0.15, 1.5], 'gaussian_noise_prob': 0.5,
    'noise_range': [1, 30], 'poisson_scale_range': [0.05, 3], 'gray_noise_prob': 0.4, 'jpeg_range': [30, 95],
    'second_blur_prob': 0.8, 'resize_prob2': [0.3, 0.4, 0.3], 'resize_range2': [0.3, 1.2], 'gaussian_noise_prob2': 0.5,
    'noise_range2': [1, 25], 'poisson_scale_range2': [0.05, 2.5], 'gray_noise_prob2': 0.4, 'jpeg_range2': [30, 95]}
KERNELS = ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']
REALESRGAN_KERNELS = {  # RealESRGANDataset's blur kernel settings, from the same recipe
    'blur_kernel_size': 21, 'kernel_list': KERNELS, 'kernel_prob': [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    'sinc_prob': 0.1, 'blur_sigma': [0.2, 3], 'betag_range': [0.5, 4], 'betap_range': [1, 2],
    'blur_kernel_size2': 21, 'kernel_list2': KERNELS, 'kernel_prob2': [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    'sinc_prob2': 0.1, 'blur_sigma2': [0.2, 1.5], 'betag_range2': [0.5, 4], 'betap_range2': [1, 2],
    'final_sinc_prob': 0.8}
TINY_RRDB = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 8}


@pytest.fixture(scope='module')
def x4_data(tmp_path_factory):
    """x4 pairs (64 px GT, 16 px bicubic LQ) and a meta_info file listing the training GT, as RealESRGANDataset reads
    its disk backend."""
    root = tmp_path_factory.mktemp('x4')
    make_tiny_pairs(str(root), n_train=4, n_val=2, size=64, scale=4)
    (root / 'meta_info.txt').write_text(''.join(f'{p.name}\n' for p in sorted((root / 'train/gt').iterdir())))
    return root


@pytest.fixture(scope='module')
def vgg_folder(tmp_path_factory):
    """A weights folder with a torchvision-layout VGG16 trunk (random weights: the loss's mechanics, not its quality),
    for irtoolkit's PerceptualGramLoss, which stands in for basicsr's PerceptualLoss (that one downloads VGG)."""
    import torchvision
    folder = tmp_path_factory.mktemp('weights')
    torch.manual_seed(0)
    trunk = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs['D'])
    torch.save({f'features.{k}': v for k, v in trunk.state_dict().items()}, folder / 'vgg16-397923af.pth')
    return folder


def realesr_recipe(data, name, model_type='RealESRNetModel', total_iter=3):
    """Real-ESRGAN's recipe shrunk: batch 1 with a queue of 2 (full after 2 iterations, so a resume at 2 continues
    from a full queue), 64 px GT crops, a tiny RRDBNet. RealESRGANDataset pads every GT to 400 px (hard-coded), so
    each iteration degrades a 400 px image; the validation set is x4 pairs read by PairedImageDataset."""
    opt = {
        'name': name, 'model_type': model_type, 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        **REALESRGAN_DEGRADATION, 'gt_size': 64, 'queue_size': 2,
        'datasets': {
            'train': {'name': 'tiny_x4', 'type': 'RealESRGANDataset', 'dataroot_gt': f'{data}/train/gt',
                      'meta_info': f'{data}/meta_info.txt', 'io_backend': {'type': 'disk'}, **REALESRGAN_KERNELS,
                      'gt_size': 64, 'use_hflip': True, 'use_rot': False, 'num_worker_per_gpu': 0,
                      'batch_size_per_gpu': 1, 'dataset_enlarge_ratio': 1},
            'val': {'name': 'tiny_x4_val', 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'},
                    'dataroot_gt': f'{data}/val/gt', 'dataroot_lq': f'{data}/val/lq'}},
        'network_g': TINY_RRDB,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'total_iter': total_iter, 'warmup_iter': -1,
                  'optim_g': {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [2], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 2, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }
    if model_type == 'RealESRGANModel':
        opt.update(l1_gt_usm=True, percep_gt_usm=True, gan_gt_usm=False,
                   network_d={'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8, 'skip_connection': True})
        opt['train'].update(
            optim_d={'type': 'Adam', 'lr': 1e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            # the recipe's PerceptualLoss options, on VGG16 up to conv3_3 (the recipe: VGG19 conv1_2 ... conv5_4)
            perceptual_opt={'type': 'PerceptualGramLoss', 'vgg_type': 'vgg16', 'use_input_norm': True,
                            'layer_weights': {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_3': 1.0},
                            'perceptual_weight': 1.0, 'style_weight': 0, 'range_norm': False, 'criterion': 'l1'},
            gan_opt={'type': 'GANLoss', 'gan_type': 'vanilla', 'real_label_val': 1.0, 'fake_label_val': 0.0,
                     'loss_weight': 0.1},
            net_d_iters=1, net_d_init_iters=0)
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


def test_training_attributes_are_what_training_set_or_changed(tmp_path):
    """The rule reads any object's attributes (no class names): new or changed tensors and numbers, nothing that
    construction set and training left alone, and only types that load with weights_only."""
    class Model:
        def __init__(self):
            self.queue_size, self.ema_decay, self.is_train = 4, 0.999, True
            self.buffer, self.fixed, self.log_dict = torch.zeros(2), torch.ones(2), {}

    model = Model()
    snapshot = attribute_snapshot(model)
    assert training_attributes(model, snapshot) == {}
    model.queue_lr, model.queue_ptr = torch.arange(6.).view(3, 2)[:, :1], np.int64(2)  # a view: saved compact
    model.buffer += 1  # changed in place
    model.ema_decay, model.is_train, model.log_dict = 0.5, True, {'l_pix': 1.0}
    got = training_attributes(model, snapshot)
    assert set(got) == {'queue_lr', 'queue_ptr', 'buffer', 'ema_decay'}
    assert type(got['queue_ptr']) is int and got['queue_lr'].untyped_storage().nbytes() == 3 * 4
    torch.save(got, tmp_path / 'a.state')
    back = torch.load(tmp_path / 'a.state', weights_only=True)
    assert torch.equal(back['queue_lr'], torch.tensor([[0.], [2.], [4.]])) and back['buffer'].tolist() == [1, 1]


@pytest.mark.parametrize('model_type', ['RealESRNetModel', 'RealESRGANModel'])
def test_realesrgan_degradation_and_queue_on_the_models_device(x4_data, tmp_path, model_type):
    """basicsr puts DiffJPEG, USM and the queue on .cuda() (compat puts them on self.device, the CPU here), and its
    filter2D fails on DiffJPEG's channels-last output on the CPU (the second blur, forced here, with a kernel per
    sample). Three batches of 2 (96 px GT, cropped to 64 after the degradation) through a queue of 4: fill, fill, then
    dequeue."""
    from irtoolkit.config.run import RunContext
    from irtoolkit.engine.basicsr_models import BasicSRModel
    from irtoolkit.utils.registry import MODEL_REGISTRY
    opt = realesr_recipe(x4_data, 'dev', model_type)
    opt.update(second_blur_prob=1.0, queue_size=4)
    opt['train'].pop('perceptual_opt', None)  # needs VGG weights; the slow test runs it
    model = BasicSRModel(MODEL_REGISTRY.get(model_type), opt, RunContext.create(opt, root_path=str(tmp_path)))
    assert model.device.type == 'cpu' and {p.device.type for p in model.jpeger.parameters()} == {'cpu'}
    random.seed(0)  # the degradation draws from the global streams (the runner seeds them)
    np.random.seed(0)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ax = torch.arange(21.) - 10
    blur = torch.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / 8)
    pulse = torch.zeros(21, 21)
    pulse[10, 10] = 1
    for _ in range(3):  # 96 px GT: after the first resize (down to 0.15x) the 21 px second blur still fits
        batch = {'gt': torch.rand(2, 3, 96, 96, generator=g), 'kernel1': (blur / blur.sum()).expand(2, 21, 21),
                 'kernel2': (blur / blur.sum()).expand(2, 21, 21), 'sinc_kernel': pulse.expand(2, 21, 21)}
        model.feed_data(batch)
        model.optimize_parameters(1)
    assert model.queue_lr.shape == (4, 3, 16, 16) and model.queue_gt.shape == (4, 3, 64, 64) and model.queue_ptr == 4
    assert model.queue_lr.device.type == 'cpu' and model.lq.shape == (2, 3, 16, 16)
    assert torch.equal(model.lq, (model.lq * 255).round() / 255)  # basicsr quantises the synthetic LQ to 8 bits
    del model.model.queue_lr  # a queue that batches of 2 cannot fill evenly: one line naming the key (basicsr asserts)
    model.model.queue_size = 3
    with pytest.raises(OptionError, match='queue_size: 3 is not a multiple of the batch size 2'):
        model.feed_data(batch)


def _assert_realesr_resumed(full, part, nets):
    """Weights of every network in ``nets`` (params and params_ema) equal after a stop at 2 and ``--auto_resume``,
    and the queue in the final training states too (the resumed run continued from the saved one)."""
    for net in nets:
        _assert_same(_weights(full, net), _weights(part, net))
    a, b = (torch.load(e / 'training_states/3.state', weights_only=True)['model_attributes'] for e in (full, part))
    assert a['queue_ptr'] == b['queue_ptr'] == 2 and a['queue_lr'].shape == (2, 3, 16, 16)
    assert torch.equal(a['queue_lr'], b['queue_lr']) and torch.equal(a['queue_gt'], b['queue_gt'])
    log = sorted(part.glob('train_part_*.log'))[-1].read_text()
    assert 'restored model attributes:' in log and 'queue_lr (2, 3, 16, 16)' in log and 'queue_ptr=2' in log
    full_log = next(full.glob('train_full_*.log')).read_text()
    assert 'Validation tiny_x4_val' in full_log and '# psnr:' in full_log


@pytest.mark.slow
def test_basicsr_realesrnet_trains_on_cpu_and_resumes_with_its_queue(x4_data, in_tmp):
    full, part = _train_and_resume(realesr_recipe(x4_data, 'resrnet'), in_tmp, split_at=2)
    _assert_realesr_resumed(full, part, ['net_g'])


@pytest.mark.slow
def test_basicsr_realesrgan_trains_on_cpu_and_resumes_with_its_queue(x4_data, vgg_folder, in_tmp, monkeypatch):
    monkeypatch.setenv('IRTOOLKIT_WEIGHTS', str(vgg_folder))
    full, part = _train_and_resume(realesr_recipe(x4_data, 'resrgan', 'RealESRGANModel'), in_tmp, split_at=2)
    _assert_realesr_resumed(full, part, ['net_g', 'net_d'])
    log = next(full.glob('train_full_*.log')).read_text()
    assert 'l_g_percep' in log and 'l_g_gan' in log and 'l_d_real' in log


def test_basicsr_swinir_model_pads_to_its_window_and_resumes_exactly(sr_data, in_tmp):
    """SwinIRModel (SRModel with a test() that pads LQ to a multiple of the window, which basicsr's SwinIR needs):
    20 px training LQ crops, 32 px validation LQ padded to 35 for window 5; stochastic depth draws from the torch
    RNG that the training state restores."""
    swinir = {'type': 'SwinIR', 'upscale': 2, 'in_chans': 3, 'img_size': 20, 'window_size': 5, 'img_range': 1.0,
              'depths': [2], 'embed_dim': 12, 'num_heads': [2], 'mlp_ratio': 2, 'drop_path_rate': 0.1,
              'upsampler': 'pixelshuffledirect', 'resi_connection': '1conv'}
    opt = sr_recipe(sr_data, 'swinir', model_type='SwinIRModel', network=swinir)
    opt['datasets']['train']['gt_size'] = 40
    full, part = _train_and_resume(opt, in_tmp)
    log = next(full.glob('train_full_*.log')).read_text()
    assert 'Network [SwinIR] is created' in log and '# psnr:' in log  # unpadded, 32 px would stop SwinIR (window 5)
    _assert_same(_weights(full), _weights(part))


def test_basicsr_model_keys_are_its_own_and_base_keys_are_checked(x4_data, tmp_path):
    """Real-ESRGAN's recipe keys (top-level degradation settings, train.net_d_iters) pass as they are; a base key
    that is wrong is still reported, one line each."""
    from irtoolkit.config.options import parse_options
    opt = realesr_recipe(x4_data, 'keys', 'RealESRGANModel')
    resolved = parse_options(write_options(opt, tmp_path / 'ok.yml'), True)
    assert resolved['resize_prob2'] == [0.3, 0.4, 0.3] and resolved['train']['net_d_iters'] == 1
    bad = dict(opt, train=dict(opt['train'], total_iter='3'), network_g=dict(TINY_RRDB, num_fet=8))
    with pytest.raises(OptionError) as err:
        parse_options(write_options(bad, tmp_path / 'bad.yml'), True)
    lines = str(err.value).splitlines()
    assert any('train.total_iter: expected int' in line for line in lines)
    assert any('network_g.num_fet: unknown argument for RRDBNet' in line for line in lines)


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


def _train_on_two_ranks(opt_path, cwd, port):
    """irtoolkit/train.py under torchrun: 2 gloo processes of one thread each; the run must succeed."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
           os.path.join(REPO, 'irtoolkit/train.py'), '-opt', opt_path, '--launcher', 'pytorch']
    proc = subprocess.run(cmd, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


@pytest.mark.slow
def test_basicsr_srmodel_under_torchrun(sr_data, in_tmp):
    _train_on_two_ranks(write_options(sr_recipe(sr_data, 'ddp', total_iter=4), in_tmp / 'ddp.yml'), in_tmp, free_port())
    assert (in_tmp / 'experiments/ddp/models/net_g_latest.pth').is_file()


@pytest.mark.slow
def test_basicsr_realesrnet_under_torchrun_and_its_queue_on_resume(x4_data, in_tmp):
    """DDP on the CPU (gloo): each rank degrades its own batches into its own queue; the training state (written by
    rank 0) names the queue but holds none, and a resume (here on one process) says so and builds the queue anew."""
    path = write_options(realesr_recipe(x4_data, 'ddp_resr', total_iter=2), in_tmp / 'ddp.yml')
    _train_on_two_ranks(path, in_tmp, free_port())
    exp = in_tmp / 'experiments/ddp_resr'
    state = torch.load(exp / 'training_states/2.state', weights_only=True)
    assert state['world_size'] == 2 and state['model_attributes']['queue_lr'] is None
    run_train(['-opt', path, '--auto_resume', '--force_yml', 'train.total_iter=3'])
    log = sorted(exp.glob('train_ddp_resr_*.log'))[-1].read_text()
    assert 'queue_ptr' in log and 'each rank keeps its own (saved by 2 rank(s), resumed on 1)' in log
    assert 'restored model attributes' not in log and (exp / 'training_states/3.state').is_file()
