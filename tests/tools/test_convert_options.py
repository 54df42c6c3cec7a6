"""irtk-convert-options (tools/convert_options.py): upstream IRConStyle and BasicSR-fork recipes in, irtoolkit
recipes out, every change printed; what cannot be mapped is reported, one line each; recipes with keys a model
renamed convert to the shipped ones."""
import copy
import os.path as osp

import yaml
from irtk_testutils import REPO

from irtoolkit.cli import convert_options as convert_options_cli
from irtoolkit.config.convert import convert_options
from irtoolkit.config.options import parse_options
from irtoolkit.config.recipe import yaml_load

UPSTREAM_CONSTYLE = '''
name: train_ConStyleNAFNetDehaze
model_type: ConStyle
manual_seed: 10
num_gpu: 1
gpu_id: 0
datasets:
  train:
    name: OTS
    type: Dataset_Dehaze
    dataroot_gt: {root}/train/gt
    dataroot_lq: {root}/train/lq
    filename_tmpl: '{{}}'
    pin_memory: True
    io_backend: {{type: disk}}
    gt_size: 32
    use_hflip: True
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    prefetch_mode: cuda
  val:
    name: SOTS_part
    type: Dataset_Dehaze
    dataroot_gt: {root}/val/gt
    dataroot_lq: {root}/val/lq
    io_backend: {{type: disk}}
network_g: {{type: ConStyleNAFNet}}
train:
  total_iter: 703632
  ConStyle_iter: 250000
  optim_g: {{type: AdamW, lr: !!float 3e-4}}
  mixing_augs: {{mixup: false, mixup_beta: 1.2, use_identity: true}}
  pixel_opt: {{type: L1Loss, loss_weight: 1.0}}
  CrossEntropy_opt: {{type: CrossEntropyLoss}}
  content_opt: {{type: ContentLoss}}
  style_opt: {{type: StyleLoss}}
val:
  val_freq: !!float 5e3
  metrics: {{psnr_y: {{type: calculate_psnr, crop_border: 0, test_y_channel: True}}}}
logger:
  print_freq: 1000
  save_checkpoint_freq: !!float 5e3
  wandb: {{project: ~, resume_id: ~}}
'''

RESTORMER_FORK = '''
name: GaussianColorDenoising_Restormer
model_type: ImageCleanModel
scale: 1
num_gpu: 8
datasets:
  train:
    name: TrainSet
    type: Dataset_GaussianDenoising
    sigma_type: constant
    sigma_range: 25
    in_ch: 3
    dataroot_gt: {root}/train/gt
    dataroot_lq: none
    gt_size: 32
    io_backend: {{type: disk}}
    batch_size_per_gpu: 2
  val:
    name: ValSet
    type: Dataset_GaussianDenoising
    sigma_test: 25
    in_ch: 3
    dataroot_gt: {root}/val/gt
    dataroot_lq: none
    io_backend: {{type: disk}}
network_g: {{type: Restormer, dim: 8, num_blocks: [1, 1, 1, 1], num_refinement_blocks: 1, heads: [1, 1, 1, 1]}}
train:
  total_iter: !!float 3e5
  use_grad_clip: true
  mixing_augs: {{mixup: false}}
  optim_g: {{type: AdamW, lr: !!float 3e-4}}
  pixel_opt: {{type: L1Loss, loss_weight: 1}}
val:
  val_freq: !!float 4e3
test: true
suffix: ~
crop_border: 0
'''


def _convert(text, tiny_data):
    return convert_options(yaml_load(text.format(root=tiny_data)))


def test_upstream_irconstyle_recipe(tiny_data, tmp_path):
    opt, changes, unmapped = _convert(UPSTREAM_CONSTYLE, tiny_data)
    assert unmapped == []
    assert opt['model_type'] == 'ConStyleModel' and 'gpu_id' not in opt
    assert opt['train']['infonce_opt'] == {'type': 'QueueInfoNCELoss'} and 'CrossEntropy_opt' not in opt['train']
    train = opt['datasets']['train']
    assert train['type'] == 'PairedRestorationDataset' and train['gt_name_sub'] == ['_.*$', '']
    assert 'prefetch_mode' not in train and opt['val']['val_freq'] == 5000 and 'wandb' not in opt['logger']
    assert opt['constyle'] == {'iter': 250000} and 'ConStyle_iter' not in opt['train']  # into ConStyle's section
    assert 'train.ConStyle_iter: -> constyle.iter' in changes
    assert len(changes) == 12, changes
    path = tmp_path / 'conv.yml'
    path.write_text(yaml.safe_dump(opt))
    assert parse_options(str(path), True)['model_type'] == 'ConStyleModel'  # passes every option check


def test_restormer_fork_recipe(tiny_data, tmp_path):
    opt, changes, unmapped = _convert(RESTORMER_FORK, tiny_data)
    assert unmapped == []
    assert opt['model_type'] == 'RestorationModel' and opt['train']['mixing_augs'] == {'mixup': False}  # Restormer's
    assert opt['datasets']['val']['degradations'] == [{'type': 'gaussian_noise', 'sigma': 25}]
    assert 'dataroot_lq' not in opt['datasets']['train'] and opt['train']['total_iter'] == 300000
    assert 'test' not in opt and 'crop_border' not in opt and 'suffix' not in opt
    path = tmp_path / 'conv.yml'
    path.write_text(yaml.safe_dump(opt))
    parse_options(str(path), True)


def test_cli_prints_changes_and_what_it_could_not_map(tiny_data, tmp_path, capsys):
    src = tmp_path / 'in.yml'
    src.write_text(UPSTREAM_CONSTYLE.format(root=tiny_data).replace('ConStyleNAFNet}', 'ConStyleNAFNetLocal}')
                   + 'mystery_key: 1\n')
    out = tmp_path / 'out.yml'
    assert convert_options_cli.main([str(src), str(out)]) == 1  # the exit status: some keys need a hand
    lines = capsys.readouterr().out.splitlines()
    assert 'changed  model_type: ConStyle -> ConStyleModel' in lines
    not_mapped = [ln for ln in lines if ln.startswith('NOT MAPPED')]
    assert len(not_mapped) == 2, lines
    assert any('mystery_key: unknown option' in ln for ln in not_mapped)
    assert any("network_g.type: unknown arch 'ConStyleNAFNetLocal'" in ln for ln in not_mapped)
    assert out.is_file()


def test_recipes_with_old_keys_convert_to_the_shipped_ones():
    """Every shipped recipe whose model renamed keys, written with the old keys (the snapshot's values moved back),
    is refused by the option checks with one line per old key naming the new one, and converts to the shipped
    recipe exactly."""
    from irtoolkit.cli.snapshot_recipes import SNAPSHOT, load_snapshot
    from irtoolkit.config.convert import move_key
    from irtoolkit.config.options import model_class, renamed_problems, renamed_keys
    snapshot = load_snapshot(osp.join(REPO, SNAPSHOT))
    tried = 0
    for rel, new in snapshot.items():
        renames = renamed_keys(model_class(new['model_type']))
        old = copy.deepcopy(new)
        moved = [o for o, n in renames.items() if move_key(old, n, o)]
        if not moved:
            continue
        tried += 1
        assert [line.split(':')[0] for line in renamed_problems(old, new['model_type'])] == moved, rel
        converted, changes, unmapped = convert_options(old)
        assert converted == new and unmapped == [], (rel, changes, unmapped)
        assert [c.split(':')[0] for c in changes] == moved, (rel, changes)
    assert tried == 47  # ConStyle joint / v2 (constyle.*) and CDD-GAN (cddgan) recipes
