"""Layers point down: every ``import`` in irtoolkit (top-level or inside a function) goes from a package to one of
the packages it may build on, so a model never reaches into the runner, configuration imports no model, and the
building blocks (archs, losses, data, metrics, contrastive) know nothing of models.

    utils                                   no irtoolkit package
    config                                  utils
    contrastive, data, losses, metrics      utils (+ contrastive for losses)
    archs                                   utils, contrastive
    inference                               utils, config, archs
    compat                                  utils, data (basicsr's LMDB backend goes through data.lmdb_env)
    training                                utils, config, metrics, inference (validation tile by tile)
    models                                  the above but inference and compat
    engine                                  the above and models
    cli, train, test, the package itself    anything
"""
import ast
import glob
import os.path as osp

from irtk_testutils import REPO

BLOCKS = {'utils', 'config', 'contrastive', 'data', 'losses', 'metrics', 'archs'}
MAY_IMPORT = {
    'utils': set(),
    'config': {'utils'},
    'contrastive': {'utils'},
    'data': {'utils'},
    'losses': {'utils', 'contrastive'},
    'metrics': {'utils'},
    'archs': {'utils', 'contrastive'},
    'inference': {'utils', 'config', 'archs'},
    'compat': {'utils', 'data'},
    'training': {'utils', 'config', 'metrics', 'inference'},
    'models': BLOCKS | {'training'},
    'engine': BLOCKS | {'training', 'models', 'inference'},
}
TOP = {'cli', 'train', 'test', '__init__'}  # entry points: may import anything


def package_of(module):
    """``irtoolkit.models.base_model`` -> ``models``; the package itself -> ``__init__``; not irtoolkit -> None."""
    parts = module.split('.')
    if parts[0] != 'irtoolkit':
        return None
    return parts[1] if len(parts) > 1 else '__init__'


def imports(source):
    """``(line, module)`` of every import of ``source``, at any depth (lazy imports in functions included);
    ``from irtoolkit import x`` counts as importing ``irtoolkit.x``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == 'irtoolkit' and node.level == 0:
            found += [(node.lineno, f'irtoolkit.{a.name}') for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(rel, source):
    """``file:line: a -> b`` for every import of ``source`` (the file ``rel`` under the repository) that points
    to a package its own package may not import."""
    own = package_of(rel[:-3].replace('/', '.').replace('.__init__', '')) if not rel.endswith('irtoolkit/__init__.py') \
        else '__init__'
    if own in TOP:
        return []
    allowed = MAY_IMPORT[own] | {own}
    out = []
    for line, module in imports(source):
        target = package_of(module)
        if target is not None and target != '__init__' and target not in allowed:
            out.append(f'{rel}:{line}: {own} -> {target} ({module})')
        elif target == '__init__' and own != '__init__':
            out.append(f'{rel}:{line}: {own} imports the package itself (registers everything)')
    return out


def test_every_package_has_a_layer():
    packages = {osp.relpath(p, osp.join(REPO, 'irtoolkit')).split(osp.sep)[0].removesuffix('.py')
                for p in glob.glob(osp.join(REPO, 'irtoolkit', '*')) if not p.endswith('__pycache__')}
    assert packages <= set(MAY_IMPORT) | TOP, packages - set(MAY_IMPORT) - TOP


def test_layers_point_down():
    files = sorted(osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'irtoolkit', '**', '*.py'), recursive=True))
    assert len(files) > 80
    found = [v for rel in files for v in violations(rel, open(osp.join(REPO, rel), encoding='utf-8').read())]
    assert not found, '\n'.join(found)


def test_the_walk_catches_an_upward_import():
    """The checker itself: an upward import, top-level or lazy, is reported with its line."""
    assert violations('irtoolkit/config/options.py', 'from irtoolkit.training.nonfinite import X\n') == [
        'irtoolkit/config/options.py:1: config -> training (irtoolkit.training.nonfinite)']
    lazy = 'def f():\n    import irtoolkit.engine.runner\n'
    assert violations('irtoolkit/models/base_model.py', lazy) == [
        'irtoolkit/models/base_model.py:2: models -> engine (irtoolkit.engine.runner)']
    assert violations('irtoolkit/archs/x_arch.py', 'from irtoolkit import models\n') == [
        'irtoolkit/archs/x_arch.py:1: archs -> models (irtoolkit.models)']
    assert violations('irtoolkit/models/m.py', 'from irtoolkit.losses.l import L\nimport torch\n') == []
    assert violations('irtoolkit/cli/infer.py', 'from irtoolkit.engine.runner import train\n') == []


def test_the_allowed_imports_have_no_cycle():
    seen, done = set(), set()

    def visit(node, path):
        assert node not in path, f'import cycle: {" -> ".join(path + [node])}'
        if node in done:
            return
        for nxt in MAY_IMPORT.get(node, ()):
            visit(nxt, path + [node])
        done.add(node)

    for package in MAY_IMPORT:
        visit(package, [])
        seen.add(package)
    assert seen == set(MAY_IMPORT)
