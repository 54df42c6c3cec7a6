"""The consolidated model layer: BaseModel builds networks (trainable or frozen, saved or not) and the losses a recipe
names, models never write into the options they are given, schemas carry defaults and allowed values, options
resolve in four steps, one checkpoint reader, and ``--describe``."""
import copy

import pytest
import torch
from irtk_testutils import CDDGAN_DEMO, shrink_recipe, write_options

from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.checkpoint import atomic_save, read_state_dict
from irtoolkit.config.options import apply_overrides, load_options, parse_options, resolve_options, validate_options
from irtoolkit.utils.registry import build_model
from irtoolkit.config.schema import NUM, Option, check_options, fill_defaults
from irtoolkit.config.run import RunContext
from irtoolkit.utils.errors import OptionError

NET = {'type': 'NAFNet', 'width': 8, 'middle_blk_num': 1, 'enc_blk_nums': [1], 'dec_blk_nums': [1]}


def _base_opt(**train):
    return {'name': 't', 'model_type': 'RestorationModel', 'num_gpu': 0, 'network_g': NET,
            'path': {}, 'train': train}


def test_build_losses_required_optional_and_the_rest():
    m = BaseModel(_base_opt(pixel_opt={'type': 'L1Loss'}, edge_opt={'type': 'MSELoss'}, zz_opt={'type': 'L1Loss'}))
    assert list(m.build_losses(required=('pixel', ), optional=('perceptual', ))) == ['pixel']
    assert list(m.build_losses(required=('pixel', ), rest=True, exclude=('zz_opt', ))) == ['pixel', 'edge']
    with pytest.raises(OptionError, match=r'train\.gan_opt: missing \(needed by BaseModel\)'):
        m.build_losses(required=('gan', ))


def test_build_net_frozen_unsaved_and_constructor_args(tmp_path):
    m = BaseModel(_base_opt(), RunContext(paths={'models': str(tmp_path), 'training_states': str(tmp_path)}))
    g = m.build_net('network_g')
    t = m.build_net('teacher', 'net_t', trainable=False, save=False, net_opt=NET, args={'width': 4})
    assert t.intro.out_channels == 4 and NET['width'] == 8  # args never reach the options
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert g.training and all(p.requires_grad for p in g.parameters())
    m.save(1)
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['net_g_1.pth']  # the frozen teacher is not saved


def test_checkpoint_option_loads_frozen_network_and_names_the_key(tmp_path):
    m = BaseModel(_base_opt())
    src = m.build_net('network_g')
    path = str(tmp_path / 'w.pth')
    atomic_save({'params': src.state_dict()}, path)
    t = m.build_net('teachers[0]', 'net_t', False, False, NET,
                    checkpoint={'path': path, 'key': 'teachers[0].checkpoint'})
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), t.state_dict().values()))
    with pytest.raises(OptionError, match=r'teachers\[1\]\.checkpoint: cannot load .*nowhere\.pth'):
        m.build_net('teachers[1]', 'net_u', False, False, NET, checkpoint={'path': str(tmp_path / 'nowhere.pth'),
                                                                           'key': 'teachers[1].checkpoint'})


def test_read_state_dict_entries(tmp_path):
    a, b = {'module.w': torch.zeros(1)}, {'w': torch.ones(1)}
    atomic_save({'params': a, 'params_ema': b}, tmp_path / 'both.pth')
    atomic_save(b, tmp_path / 'bare.pth')
    assert read_state_dict(str(tmp_path / 'both.pth'), 'params') == ({'w': a['module.w']}, 'params')
    assert read_state_dict(str(tmp_path / 'both.pth'), 'auto')[1] == 'params_ema'
    assert read_state_dict(str(tmp_path / 'bare.pth'), 'params') == (b, None)  # a bare state dict is used whole
    atomic_save({'params': a}, tmp_path / 'one.pth')
    with pytest.raises(KeyError, match="no 'params_ema' entry; has params"):
        read_state_dict(str(tmp_path / 'one.pth'), 'params_ema')


def test_models_never_write_into_their_options(tiny_data, in_tmp):
    """CDD-GAN used to add network_g_b / network_n / dims to the options while building."""
    opt = parse_options(write_options(shrink_recipe(tiny_data, 'cdd', 10, **CDDGAN_DEMO), in_tmp / 'cdd.yml'), True)
    before = copy.deepcopy(opt)
    model = build_model(opt)
    assert opt == before
    assert 'net_n' in model.networks and 'network_n_b' not in model.opt


def test_schema_defaults_choices_and_did_you_mean():
    schema = {'sec': {'mode': Option(str, 'a', choices=('a', 'b'), doc='m'), 'w': Option(NUM, 0.5), 'x': int}}
    assert fill_defaults({}, schema) == {'sec': {'mode': 'a', 'w': 0.5}}
    assert fill_defaults({'sec': {'mode': 'b'}}, schema) == {'sec': {'mode': 'b', 'w': 0.5}}
    with pytest.raises(OptionError, match=r"f: sec\.mode: expected one of a, b, got str 'c'"):
        check_options({'sec': {'mode': 'c'}}, schema, 'f: ')
    with pytest.raises(OptionError, match=r'sec\.mode_: unknown option; did you mean mode\?'):
        check_options({'sec': {'mode_': 'a'}}, schema)


def test_parse_options_in_four_steps(tiny_data, in_tmp):
    recipe = shrink_recipe(tiny_data, 'steps', 10)
    recipe['model_type'] = 'NLCLModel'
    path = write_options(recipe, in_tmp / 'steps.yml')
    opt = apply_overrides(load_options(path), ['nlcl.num_bg=4', 'train.total_iter=12'])
    schema = validate_options(opt, path)
    resolved = resolve_options(opt, schema, path, True)
    assert resolved['nlcl']['num_bg'] == 4 and resolved['nlcl']['num_rain'] == 128  # override, then defaults
    assert resolved['train']['total_iter'] == 12 and 'nlcl' not in load_options(path)
    assert resolved == parse_options(path, True, ['nlcl.num_bg=4', 'train.total_iter=12'])
    bad = apply_overrides(load_options(path), ['nlcl.rain_mode=rainy'])
    with pytest.raises(OptionError, match=r"nlcl\.rain_mode: expected one of network, residual, got str 'rainy'"):
        validate_options(bad, path)


def _main(argv, capsys):
    """``irtoolkit/train.py ARGV`` as its main() runs it: (exit status, stdout, stderr)."""
    from irtoolkit.train import main
    try:
        main(argv)
        code = 0
    except SystemExit as end:
        code = end.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_describe_prints_model_and_arch_tables(capsys):
    code, out, _ = _main(['--describe', 'CDDGANModel'], capsys)
    assert code == 0 and '| cddgan.num_patches ' in out and '256' in out
    code, out, _ = _main(['--describe', 'NAFNet'], capsys)
    assert code == 0 and '| width ' in out and '| 16 ' in out
    code, _, err = _main(['--describe', 'NAFNett'], capsys)
    assert code == 2 and err.strip().count('\n') == 0 and 'closest: NAFNet' in err


def test_every_option_problem_of_a_file_in_one_run(tiny_data, in_tmp, capsys):
    """Three mistakes, three lines, exit status 2 and no traceback; --debug shows the traceback."""
    opt = shrink_recipe(tiny_data, 'bad', 10)
    opt['trian'] = {}  # unknown key
    opt['network_g']['widht'] = 8  # unknown constructor argument
    opt['datasets']['train']['dataroot_gt'] = str(in_tmp / 'missing')  # missing path
    path = write_options(opt, in_tmp / 'bad.yml')
    code, _, err = _main(['-opt', path], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and 'Traceback' not in err, err
    assert len(lines) == 3, lines
    assert 'bad.yml: trian: unknown option; did you mean train' in lines[0]
    assert 'bad.yml: network_g.widht: unknown argument for NAFNet; did you mean width?' in lines[1]
    assert lines[2].endswith(f'bad.yml: datasets.train.dataroot_gt: not found: {in_tmp / "missing"}')
    with pytest.raises(OptionError):  # --debug: the exception itself, traceback and all
        _main(['-opt', path, '--debug'], capsys)
