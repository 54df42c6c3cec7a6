"""Plugins from a .py file outside the package, and clear errors for bad option files."""
import textwrap

from pathlib import Path

import pytest
import torch
from irtk_testutils import REPO, shrink_recipe, write_options

from irtoolkit.engine.runner import train as run_train
from irtoolkit.config.options import parse_options, yaml_load
from irtoolkit.utils.errors import OptionError

PLUGIN = textwrap.dedent('''
    import torch
    from torch import nn
    from basicsr.utils.registry import ARCH_REGISTRY


    @ARCH_REGISTRY.register()
    class TestPluginResNet(nn.Module):
        def __init__(self, channels=3, width=8):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, channels, 3, padding=1))

        def forward(self, x):
            return x + self.body(x)
''')


def test_plugin_arch_from_py_file(tiny_data, in_tmp):
    plugin_dir = in_tmp / 'elsewhere'
    plugin_dir.mkdir()
    (plugin_dir / 'my_arch.py').write_text(PLUGIN)
    (in_tmp / 'opts').mkdir()
    # relative to the options file's folder
    opt = shrink_recipe(tiny_data, 'plugin', 10, plugins=['../elsewhere/my_arch.py'],
                        network_g={'type': 'TestPluginResNet', 'width': 8})
    run_train(['-opt', write_options(opt, in_tmp / 'opts' / 'p.yml')])
    assert (in_tmp / 'experiments/plugin/models/net_g_latest.pth').is_file()
    run_train(['-opt', write_options(opt, in_tmp / 'opts' / 'p.yml')])  # imported once per process: no re-registration


def test_readme_plugin_example_runs(tiny_data, in_tmp):
    readme = (Path(REPO) / 'README.md').read_text()
    section = readme[readme.index('## Add your own network'):]
    code = section[section.index('```python') + 9:section.index('```', section.index('```python') + 9)]
    yaml_block = section[section.index('```yaml') + 7:section.index('```', section.index('```yaml') + 7)]
    (in_tmp / 'path' / 'to').mkdir(parents=True)
    (in_tmp / 'path' / 'to' / 'my_arch.py').write_text(code)
    extra = yaml_load(yaml_block)
    opt = shrink_recipe(tiny_data, 'readme_plugin', 5, **extra)
    run_train(['-opt', write_options(opt, in_tmp / 'readme.yml')])
    state = torch.load(in_tmp / 'experiments/readme_plugin/models/net_g_latest.pth', weights_only=True)
    assert state['params']['body.0.weight'].shape == (32, 3, 3, 3)


def _expect_error(tmp_path, opt, *fragments, text=None):
    path = tmp_path / 'bad.yml'
    if text is not None:
        path.write_text(text)
    else:
        write_options(opt, path)
    with pytest.raises(OptionError) as err:
        o = parse_options(str(path), True)
        from irtoolkit.utils.registry import build_model
        build_model(o)
    msg = str(err.value)
    assert '\n' not in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_bad_options_fail_with_file_key_and_expectation(tiny_data, tmp_path):
    base = shrink_recipe(tiny_data)
    msg = _expect_error(tmp_path, {**base, 'trian': {}}, 'bad.yml', 'trian: unknown option', 'did you mean train')
    suggested = set(msg.replace(',', ' ').replace('?', ' ').split())
    assert not {'rank', 'is_train', 'world_size', 'dist', 'opt_path'} & suggested, msg
    for run_key in ('rank', 'is_train', 'opt_path'):  # run state is not an option
        _expect_error(tmp_path, {**base, run_key: 0}, f'{run_key}: unknown option')
    bad = shrink_recipe(tiny_data)
    bad['train']['total_iter'] = '100'
    _expect_error(tmp_path, bad, 'train.total_iter: expected int, got str')
    bad = shrink_recipe(tiny_data)
    bad['network_g']['type'] = 'NAFNett'
    _expect_error(tmp_path, bad, 'network_g.type: unknown arch', 'NAFNet')
    bad = shrink_recipe(tiny_data)
    bad['network_g']['widht'] = 8
    _expect_error(tmp_path, bad, 'network_g.widht: unknown argument for NAFNet', 'width')
    bad = shrink_recipe(tiny_data)
    bad['model_type'] = 'RestorationModle'
    _expect_error(tmp_path, bad, 'model_type: unknown model', 'RestorationModel')
    bad = shrink_recipe(tiny_data)
    bad['train']['pixel_opt']['type'] = 'L1Los'
    _expect_error(tmp_path, bad, 'train.pixel_opt.type: unknown loss', 'L1Loss')
    bad = shrink_recipe(tiny_data)
    bad['logger']['print_freq'] = 1.5
    _expect_error(tmp_path, bad, 'logger.print_freq: expected int')
    _expect_error(tmp_path, None, 'not valid YAML', text='name: [unclosed\n')
    _expect_error(tmp_path, None, 'plugins[0]: file not found', text='name: x\nmodel_type: RestorationModel\n'
                  'plugins: [nowhere/missing.py]\n')


def test_missing_option_file_and_dataset_root(tiny_data, tmp_path):
    with pytest.raises(OptionError, match='options file not found'):
        parse_options(str(tmp_path / 'nope.yml'))
    bad = shrink_recipe(tiny_data)
    bad['datasets']['train']['dataroot_gt'] = str(tmp_path / 'missing')
    with pytest.raises(OptionError, match=r'bad.yml: datasets.train.dataroot_gt: not found: .*missing'):
        run_train(['-opt', write_options(bad, tmp_path / 'bad.yml')])
