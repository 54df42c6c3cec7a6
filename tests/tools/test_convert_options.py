"""irtk-convert-options (tools/convert_options.py): upstream IRConStyle, ConStyle v2 and BasicSR-fork recipes in,
irtoolkit recipes out, every change printed; what cannot be mapped is reported, one line each; recipes with keys a
model renamed convert to the shipped ones. Every upstream IRConStyle recipe layout (dataset class x model type)
converts with nothing unmapped, trains 2 iterations and tests with upstream's pairing and padding."""
import copy
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import yaml
from irtk_testutils import REPO, write_options

from irtoolkit.cli import convert_options as convert_options_cli
from irtoolkit.config.convert import convert_options
from irtoolkit.config.options import parse_options
from irtoolkit.config.recipe import yaml_load
from irtoolkit.engine.runner import test as run_test
from irtoolkit.engine.runner import train as run_train

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
    assert train['type'] == 'PairedRestorationDataset' and train['pairing'] == 'sorted'  # as Dataset_Dehaze reads
    assert 'gt_name_sub' not in train and 'filename_tmpl' not in train and 'pad_multiple' not in train
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
    from irtoolkit.config.options import model_class, renamed_keys, renamed_problems
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


# --- every upstream IRConStyle recipe layout: converted with nothing unmapped, trained 2 iterations, then tested ---
# Our own small copies of the structure of upstream's options/{train,test}/<backbone>/*.yml (Dongqi-Fan/IRConStyle):
# the same sections, keys and quirks (!!float numbers, prefetch_mode: cuda, gpu_id, an empty wandb, top-level
# test/suffix/crop_border/save_img in test recipes); one layout per dataset class and model type.

UPSTREAM_TRAIN = '''
name: {name}
model_type: {model}
manual_seed: 10
num_gpu: 1
gpu_id: 0
datasets:
  train:
    name: TrainSet
    type: {cls}
{train_data}
    pin_memory: True
    io_backend:
      type: disk
    scale: 1
    gt_size: 32
    use_hflip: True
    use_rot: True
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 1
    prefetch_mode: cuda
  val:
    name: ValSet
    type: {cls}
{val_data}
    io_backend:
      type: disk
network_g:
  type: {net}
path:
  pretrain_network_g: ~
  strict_load_g: true
  resume_state: ~
train:
  total_iter: 2
{constyle_iter}
  warmup_iter: -1
  ema_decay: 0.999
  optim_g: {{type: AdamW, lr: !!float 3e-4, weight_decay: !!float 1e-4, betas: [0.9, 0.999]}}
  scheduler: {{type: CosineAnnealingRestartCyclicLR, periods: [1, 1], restart_weights: [1, 1],
               eta_mins: [0.0003, 0.000001]}}
  mixing_augs: {{mixup: false, mixup_beta: 1.2, use_identity: true}}
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
{constyle_losses}
val:
  val_freq: !!float 2
  save_img: false
  metrics:
    psnr_y: {{type: calculate_psnr, crop_border: 0, test_y_channel: True}}
logger:
  print_freq: 1
  save_checkpoint_freq: !!float 2
  use_tb_logger: False
  wandb: {{project: ~, resume_id: ~}}
dist_params: {{backend: nccl, port: 29500}}
'''
CONSTYLE_LOSSES = '''  CrossEntropy_opt: {type: CrossEntropyLoss}
  content_opt: {type: ContentLoss}
  style_opt: {type: StyleLoss}'''
CONSTYLE_TRAIN = dict(constyle_iter='  ConStyle_iter: 1', constyle_losses=CONSTYLE_LOSSES)
UPSTREAM_TEST = '''
name: {name}
suffix: ~
model_type: {model}
crop_border: ~
num_gpu: 1
gpu_id: 0
manual_seed: 0
test: True
datasets:
  test_1:
    name: TestSet
    type: {cls}
{test_data}
    io_backend:
      type: disk
network_g:
  type: {net}
val:
  save_img: false
  metrics:
    psnr_rgb: {{type: calculate_psnr, crop_border: 0, test_y_channel: False}}
    ssim_y: {{type: calculate_ssim, crop_border: 0, test_y_channel: True}}
save_img: true
path:
  pretrain_network_g: {weights}
  strict_load_g: true
'''
SORTED_CLASSES = ('Dataset_Derain', 'Dataset_Derain_Maxim', 'Dataset_Dehaze', 'Dataset_Maxim_Dehaze')
NOISE_CLASSES = ('Dataset_GaussianDenoising', 'Dataset_Maxim_GaussianDenoising')
# the multiple upstream pads test images to (None: no padding)
TEST_PAD = {'Dataset_Paired': 8, 'Datasets_Paired': 8, 'Dataset_Derain': 8, 'Dataset_Dehaze': 8,
            'Dataset_GaussianDenoising': 8, 'Dataset_Derain_Maxim': 64, 'Dataset_Maxim': 64,
            'Dataset_Maxim_Dehaze': 64, 'Dataset_Maxim_GaussianDenoising': 64}
MAXIM_SMALL = dict(features=8, block_size_hr=[4, 4], grid_size_hr=[4, 4], block_size_lr=[2, 2], grid_size_lr=[4, 4])
SMALL = {  # the small widths the converted recipes get (the layouts name the networks with upstream's defaults)
    'NAFNet': dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
    'Restormer': dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]),
    'Maxim': MAXIM_SMALL,
    'ConStyleNAFNet': dict(dim=8, left_blk_num=[1, 1, 1], bottom_blk_num=1, right_blk_num=[1, 1, 1],
                           constyle_opt={'K': 16}),
    'ConStyleRestormer': dict(dim=8, left_blk_num=[1, 1, 1], bottom_blk_num=1, right_blk_num=[1, 1, 1],
                              num_refinement_blocks=1, heads=[1, 1, 1, 1], constyle_opt={'K': 16}),
    'ConStyleMaxim': dict(MAXIM_SMALL, bottom_blk_num=1, constyle_opt={'K': 16}),
}
# (model_type, dataset class, network_g.type) as upstream's recipes combine them; the first of each class runs in the
# fast suite, the rest are marked slow
LAYOUTS = [
    ('ConStyle', 'Dataset_Dehaze', 'ConStyleNAFNet'), ('Origin', 'Dataset_Derain', 'NAFNet'),
    ('ConStyle', 'Dataset_Paired', 'ConStyleRestormer'), ('Origin', 'Datasets_Paired', 'Restormer'),
    ('ConStyle', 'Dataset_GaussianDenoising', 'ConStyleNAFNet'), ('Origin', 'Dataset_Maxim', 'Maxim'),
    ('ConStyle', 'Dataset_Maxim_Dehaze', 'ConStyleMaxim'), ('Origin', 'Dataset_Derain_Maxim', 'Maxim'),
    ('Origin', 'Dataset_Maxim_GaussianDenoising', 'ConStyleMaxim'),  # upstream's slip: trains Maxim
]
SLOW_LAYOUTS = [
    ('Origin', 'Dataset_Dehaze', 'Restormer'), ('ConStyle', 'Dataset_Derain', 'ConStyleNAFNet'),
    ('Origin', 'Dataset_Paired', 'NAFNet'), ('ConStyle', 'Datasets_Paired', 'ConStyleRestormer'),
    ('Origin', 'Dataset_GaussianDenoising', 'Restormer'), ('ConStyle', 'Dataset_Maxim', 'ConStyleMaxim'),
    ('Origin', 'Dataset_Maxim_Dehaze', 'Maxim'), ('ConStyle', 'Dataset_Derain_Maxim', 'ConStyleMaxim'),
    ('ConStyle', 'Dataset_Maxim_GaussianDenoising', 'ConStyleMaxim'),
]


@pytest.fixture(scope='module')
def upstream_data(tmp_path_factory, tiny_data):
    """``{'name': root, 'renamed': root}``, each ``{train,test}/{gt,lq}``: ``name`` holds pairs of identical names
    (tiny_data's), ``renamed`` the same images named as Rain100H ships them (``rain-0003.png`` with
    ``norain-0003.png``), which only sorted pairing reads. Test images are 44 x 52, a multiple of neither 8 nor 64."""
    roots = {}
    for layout in ('name', 'renamed'):
        root = tmp_path_factory.mktemp(f'upstream_{layout}')
        for split, src in (('train', 'train'), ('test', 'val')):
            for side in ('gt', 'lq'):
                os.makedirs(root / split / side)
                for f in sorted(os.listdir(osp.join(tiny_data, src, side))):
                    img = cv2.imread(osp.join(tiny_data, src, side, f))
                    stem = {'gt': 'norain-', 'lq': 'rain-'}[side] + f[:-4] if layout == 'renamed' else f[:-4]
                    cv2.imwrite(str(root / split / side / f'{stem}.png'), img[:44, :52] if split == 'test' else img)
        roots[layout] = str(root)
    return roots


def _data_keys(cls, root, split, phase):
    """The data lines of a dataset section of class ``cls`` on ``root/split``, indented as upstream's."""
    if cls in NOISE_CLASSES:
        sigma = '    sigma_type: random\n    sigma_range: [0, 50]' if phase == 'train' else '    sigma_test: 25'
        return (f'{sigma}\n    in_ch: 3\n    dataroot_gt: {root}/{split}/gt\n    dataroot_lq: none\n'
                "    filename_tmpl: '{}'")
    return f'    dataroot_gt: {root}/{split}/gt\n    dataroot_lq: {root}/{split}/lq\n    filename_tmpl: \'{{}}\''


def _layout_root(cls, upstream_data):
    return upstream_data['renamed' if cls in SORTED_CLASSES else 'name']


def _shrink(opt):
    net = opt['network_g']
    net.update(SMALL[net['type']])
    return opt


def _converted(text):
    opt, changes, unmapped = convert_options(yaml_load(text))
    assert unmapped == [], unmapped
    return _shrink(opt), changes


def _train_and_test(model, cls, net, upstream_data, root_dir):
    root = _layout_root(cls, upstream_data)
    extra = CONSTYLE_TRAIN if model == 'ConStyle' else dict(constyle_iter='', constyle_losses='')
    name = f'train_{model}_{cls}'
    opt, changes = _converted(UPSTREAM_TRAIN.format(
        name=name, model=model, cls=cls, net=net, train_data=_data_keys(cls, root, 'train', 'train'),
        val_data=_data_keys(cls, root, 'train', 'val'), **extra))
    if cls in SORTED_CLASSES:
        assert opt['datasets']['train']['pairing'] == 'sorted'  # else the renamed LQ would not pair
    run_train(['-opt', write_options(opt, root_dir / 'train.yml')])
    weights = root_dir / 'experiments' / name / 'models' / 'net_g_latest.pth'
    assert weights.is_file()
    test_opt, _ = _converted(UPSTREAM_TEST.format(name=f'test_{model}_{cls}', model=model, cls=cls, net=net,
                                                  test_data=_data_keys(cls, root, 'test', 'test'), weights=weights))
    assert test_opt['network_g'] == opt['network_g']  # the trained network, rebuilt from the test recipe
    results = run_test(['-opt', write_options(test_opt, root_dir / 'test.yml')])
    assert set(results['TestSet']) >= {'psnr_rgb', 'ssim_y'}
    assert all(np.isfinite(v) for v in results['TestSet'].values())
    saved = sorted((root_dir / 'results' / f'test_{model}_{cls}' / 'visualization' / 'TestSet').glob('*.png'))
    assert len(saved) == 2
    pad = TEST_PAD[cls]  # upstream's test protocol: the 44 x 52 image padded, measured and saved so
    assert cv2.imread(str(saved[0])).shape[:2] == (-(-44 // pad) * pad, -(-52 // pad) * pad)
    return opt, changes


@pytest.mark.parametrize('model,cls,net', LAYOUTS, ids=['-'.join(p) for p in LAYOUTS])
def test_upstream_layout_trains_and_tests(model, cls, net, upstream_data, in_tmp):
    opt, changes = _train_and_test(model, cls, net, upstream_data, in_tmp)
    expected_model = {'ConStyle': 'ConStyleModel', 'Origin': 'RestorationModel'}[model]
    assert opt['model_type'] == expected_model
    if net == 'ConStyleMaxim' and model == 'Origin':
        assert opt['network_g']['type'] == 'Maxim'  # upstream's Origin model cannot call a ConStyle network
        assert any(c.startswith('network_g.type: ConStyleMaxim -> Maxim') for c in changes)


@pytest.mark.slow
@pytest.mark.parametrize('model,cls,net', SLOW_LAYOUTS, ids=['-'.join(p) for p in SLOW_LAYOUTS])
def test_upstream_layout_trains_and_tests_slow(model, cls, net, upstream_data, in_tmp):
    _train_and_test(model, cls, net, upstream_data, in_tmp)


@pytest.mark.parametrize('cls', sorted(TEST_PAD))
def test_every_upstream_dataset_class_reads_as_upstream(cls):
    """Pairing, padding and σ of each class, train and test phase."""
    root = '/data'
    train, _ = _converted(UPSTREAM_TRAIN.format(
        name='t', model='Origin', cls=cls, net='NAFNet', train_data=_data_keys(cls, root, 'train', 'train'),
        val_data=_data_keys(cls, root, 'val', 'val'), constyle_iter='', constyle_losses=''))
    test, _ = _converted(UPSTREAM_TEST.format(name='t', model='Origin', cls=cls, net='NAFNet',
                                              test_data=_data_keys(cls, root, 'test', 'test'), weights='w.pth'))
    d_train, d_val, d_test = train['datasets']['train'], train['datasets']['val'], test['datasets']['test_1']
    maxim = TEST_PAD[cls] == 64
    if cls in NOISE_CLASSES:
        assert d_train['type'] == d_test['type'] == 'SyntheticDegradationDataset'
        assert d_train['degradations'] == [{'type': 'gaussian_noise', 'sigma': [0, 50]}]
        assert d_test['degradations'] == [{'type': 'gaussian_noise', 'sigma': 25}]
        assert not {'dataroot_lq', 'in_ch', 'filename_tmpl', 'sigma_test'} & (set(d_train) | set(d_test))
        assert d_val.get('pad_multiple') == TEST_PAD[cls]  # upstream's denoising sets pad in validation too
    else:
        assert d_train['type'] == d_test['type'] == 'PairedRestorationDataset'
        pairing = 'sorted' if cls in SORTED_CLASSES else 'name'
        assert d_train.get('pairing', 'name') == d_test.get('pairing', 'name') == pairing
        assert d_val.get('pad_multiple') == (64 if maxim and 'Derain' not in cls else None)
    assert d_test['pad_multiple'] == TEST_PAD[cls]
    assert d_train.get('pad_multiple') == (64 if maxim and 'Derain' not in cls else None)


def test_pairing_follows_the_backend_and_keys_upstream_cannot_honour_are_reported():
    def convert(cls, **keys):
        section = {'name': 's', 'type': cls, 'dataroot_gt': '/g', 'dataroot_lq': '/l', 'io_backend': {'type': 'disk'},
                   **keys}
        return convert_options({'model_type': 'Origin', 'network_g': {'type': 'NAFNet'},
                                'datasets': {'test_1': section}})
    opt, _, _ = convert('Dataset_Derain', io_backend={'type': 'lmdb'})
    assert 'pairing' not in opt['datasets']['test_1']  # an LMDB: upstream pairs the keys by name
    opt, _, _ = convert('Dataset_Dehaze', io_backend={'type': 'lmdb'})
    assert opt['datasets']['test_1']['pairing'] == 'sorted'
    _, changes, unmapped = convert('Dataset_Paired', color='y', meta_info_file='/m.txt', mystery=1)
    assert [u.split(':')[0] for u in unmapped] == ['datasets.test_1.color', 'datasets.test_1.meta_info_file']
    assert 'datasets.test_1.mystery: dropped (not read by Dataset_Paired)' in changes
    opt, _, unmapped = convert('Dataset_GaussianDenoising', in_ch=1, sigma_test=15)
    assert [u.split(':')[0] for u in unmapped] == ['datasets.test_1.in_ch']
    train = {'name': 's', 'type': 'Dataset_GaussianDenoising', 'dataroot_gt': '/g', 'sigma_type': 'choice',
             'sigma_range': [15, 25, 50], 'in_ch': 3, 'gt_size': 32}
    opt, _, unmapped = convert_options({'model_type': 'Origin', 'network_g': {'type': 'NAFNet'},
                                        'datasets': {'train': train}, 'train': {'total_iter': 1}})
    assert unmapped == []
    assert opt['datasets']['train']['degradations'] == [
        {'type': 'one_of', 'choices': [{'type': 'gaussian_noise', 'sigma': s} for s in (15, 25, 50)]}]


def test_constyle_v2_layouts(tiny_data, in_tmp):
    """ConStyle v2's model types and test datasets: outside training they cut LQ and GT to multiples of ``mod``
    (Dataset_Paired by name, Dataset_Non_Paired in sorted order, Dataset_JPEG from GT); a converted v2 test recipe
    runs and saves images of the cut size."""
    v2_train = yaml_load(UPSTREAM_TRAIN.format(
        name='v2', model='IRConStyle', cls='Dataset_Paired', net='ConStyleNAFNet',
        train_data=_data_keys('Dataset_Paired', tiny_data, 'train', 'train'),
        val_data=_data_keys('Dataset_Paired', tiny_data, 'val', 'val') + '\n    mod: 32', **CONSTYLE_TRAIN))
    v2_train['path']['pretrain_constyle'] = 'prior.pth'
    opt, _, unmapped = convert_options(v2_train)
    assert unmapped == [] and opt['model_type'] == 'IRConStyleModel'
    assert opt['datasets']['val']['crop_multiple'] == 32 and 'pad_multiple' not in opt['datasets']['val']
    test = {'name': 'v2_test', 'model_type': 'Origin', 'pretraining': False, 'val': {
        'suffix': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}}, 'save_img': True,
        'network_g': {'type': 'NAFNet', **SMALL['NAFNet']}, 'path': {'pretrain_constyle': None}, 'datasets': {}}
    for i, (cls, extra) in enumerate((('Dataset_Paired', {}), ('Dataset_Non_Paired', {}),
                                      ('Dataset_JPEG', {'quality_factor': 20}))):
        test['datasets'][f'test_{i}'] = dict(name=cls, type=cls, dataroot_gt=osp.join(tiny_data, 'val', 'gt'),
                                             dataroot_lq=osp.join(tiny_data, 'val', 'lq'), mod=24,
                                             io_backend={'type': 'disk'}, **extra)
    opt, changes, unmapped = convert_options(test)
    assert unmapped == [], unmapped
    assert opt['datasets']['test_2']['degradations'] == [{'type': 'jpeg', 'quality': 20}]
    assert opt['datasets']['test_1']['pairing'] == 'sorted'
    run_test(['-opt', write_options(opt, in_tmp / 'test.yml')])
    for cls in ('Dataset_Paired', 'Dataset_Non_Paired', 'Dataset_JPEG'):
        saved = sorted((in_tmp / 'results' / 'v2_test' / 'visualization' / cls).glob('*.png'))
        assert len(saved) == 2 and cv2.imread(str(saved[0])).shape[:2] == (48, 48), cls  # 64 cut to 2 x 24


def test_check_counts_recipes_with_nothing_unmapped(tmp_path, capsys, tiny_data):
    ok = tmp_path / 'options' / 'train'
    ok.mkdir(parents=True)
    (ok / 'a.yml').write_text(UPSTREAM_CONSTYLE.format(root=tiny_data))
    (ok / 'b.yml').write_text(UPSTREAM_CONSTYLE.format(root=tiny_data) + 'mystery_key: 1\n')
    assert convert_options_cli.main(['--check', str(tmp_path / 'options')]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == '1/2 recipes convert with nothing unmapped'
    assert len(out) == 2 and out[0].startswith(f'{ok / "b.yml"}: NOT MAPPED  mystery_key: unknown option')
    assert convert_options_cli.main(['--check', str(ok / 'a.yml')]) == 0
    assert convert_options_cli.main(['--check', str(tmp_path / 'nowhere')]) == 2
