"""Every command is a console script of the installed package, and no code edits ``sys.path``.

* pyproject.toml ``[project.scripts]``: every ``module:function`` imports and is callable, ``--help`` exits 0, and
  an installed irtoolkit declares (and has installed) the same scripts;
* every module of irtoolkit/cli/ is a console script, and every tools/*.py is a thin wrapper running one: no command
  exists only as a file;
* no .py file under irtoolkit/, tools/, benchmarks/ or tests/ changes ``sys.path`` (assignment, item or slice
  assignment, ``+=``, ``del``, a mutating list method, ``site.addsitedir``), neither in its code nor in a Python
  script it holds in a string (a subprocess worker). The package is installed (``pip install -e .``), so nothing
  needs to.
"""
import ast
import glob
import importlib
import inspect
import os.path as osp
import sysconfig
import textwrap
import tomllib

import pytest
from irtk_testutils import REPO

with open(osp.join(REPO, 'pyproject.toml'), 'rb') as _f:
    SCRIPTS = tomllib.load(_f)['project']['scripts']

# Files that still edit sys.path, each with why; remove an entry when its file is fixed (its test then xpasses).
SCANNED = ('irtoolkit', 'tools', 'benchmarks', 'tests')
MUTATING_METHODS = {'insert', 'append', 'extend', 'remove', 'pop', 'clear', 'reverse', 'sort', '__setitem__',
                    '__delitem__', '__iadd__'}


def _entry(value):
    module, _, func = value.partition(':')
    return module.strip(), func.strip()


# ------------------------------------------------------------------------------------------ console scripts
@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_console_script_imports_and_its_help_exits_0(name, capsys):
    module, func = _entry(SCRIPTS[name])
    assert name.startswith('irtk-') and func == 'main', f'{name} = {SCRIPTS[name]!r}: expected irtk-* = "module:main"'
    main = getattr(importlib.import_module(module), func)
    assert callable(main)
    assert list(inspect.signature(main).parameters) == ['argv'], f'{name}: main(argv=None) takes the arguments'
    with pytest.raises(SystemExit) as exit_:
        main(['--help'])
    assert exit_.value.code in (0, None)
    assert 'usage:' in capsys.readouterr().out


def test_every_cli_module_is_a_console_script():
    modules = sorted(osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(REPO, 'irtoolkit', 'cli', '*.py')))
    modules = [m for m in modules if not m.startswith('_')]
    assert len(modules) >= 10
    targets = {_entry(v)[0] for v in SCRIPTS.values()}
    missing = [f'irtoolkit.cli.{m}' for m in modules if f'irtoolkit.cli.{m}' not in targets]
    assert not missing, f'modules of irtoolkit/cli without a [project.scripts] entry in pyproject.toml: {missing}'


def _wrapper_target(path):
    """The module a tools/*.py wrapper runs; AssertionError when the file is more than a wrapper."""
    tree = ast.parse(open(path, encoding='utf-8').read(), path)
    assert ast.get_docstring(tree), f'{path}: no docstring naming its console script'
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert not defs, f'{path}: defines {[d.name for d in defs]}; the code belongs in irtoolkit/cli/'
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and [a.name for a in n.names] == ['main']]
    assert len(imports) == 1, f'{path}: expected one "from irtoolkit.cli.<name> import main"'
    assert len(tree.body) <= 5, f'{path}: {len(tree.body)} statements; a wrapper has a docstring, imports and a call'
    return imports[0].module


def test_tools_are_wrappers_of_console_scripts():
    files = sorted(glob.glob(osp.join(REPO, 'tools', '*.py')))
    assert len(files) >= 10
    targets = {_entry(v)[0]: k for k, v in SCRIPTS.items()}
    for path in files:
        module = _wrapper_target(path)
        name = osp.splitext(osp.basename(path))[0]
        assert module == f'irtoolkit.cli.{name}', f'tools/{name}.py runs {module}, not irtoolkit.cli.{name}'
        assert module in targets, f'tools/{name}.py runs {module}, which is no console script'
        assert targets[module] in ast.get_docstring(ast.parse(open(path).read())), \
            f'tools/{name}.py: the docstring should name {targets[module]}'


def test_wrapper_check_refuses_a_tool_with_code(tmp_path):
    path = tmp_path / 'tool.py'
    path.write_text('"""A tool."""\nimport sys\n\n\ndef main():\n    return 0\n')
    with pytest.raises(AssertionError, match='defines'):
        _wrapper_target(str(path))


def test_installed_scripts_match_pyproject():
    """The scripts pip wrote next to this interpreter are pyproject's, each running its ``module:main``."""
    scripts_dir = sysconfig.get_path('scripts')
    installed = sorted(osp.basename(p) for p in glob.glob(osp.join(scripts_dir, 'irtk-*')))
    if not installed:
        pytest.skip(f'no irtk-* in {scripts_dir}: irtoolkit is not installed here (pip install -e .)')
    assert installed == sorted(SCRIPTS), f'{scripts_dir} differs from pyproject.toml: pip install -e . again'
    for name, value in SCRIPTS.items():
        module, func = _entry(value)
        with open(osp.join(scripts_dir, name), encoding='utf-8', errors='replace') as f:
            assert f'from {module} import {func}' in f.read(), f'{name} does not run {value}: pip install -e . again'


# ------------------------------------------------------------------------------------------ sys.path edits
def _aliases(tree):
    """Names bound to the sys module, to sys.path and to the site module in ``tree``."""
    sys_names, path_names, site_names = {'sys'}, set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == 'sys':
                    sys_names.add(a.asname or 'sys')
                elif a.name == 'site':
                    site_names.add(a.asname or 'site')
        elif isinstance(node, ast.ImportFrom) and node.module == 'sys':
            path_names.update(a.asname or a.name for a in node.names if a.name == 'path')
    return sys_names, path_names, site_names


def sys_path_edits(source, filename='<string>', first_line=1):
    """``[(line, code)]`` for every statement of ``source`` that changes ``sys.path``, including those of Python
    scripts held in its string literals (a literal that mentions ``sys.path`` and parses is read as a script)."""
    tree = ast.parse(source, filename)
    sys_names, path_names, site_names = _aliases(tree)
    for node in ast.walk(tree):  # p = sys.path: p is sys.path too
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) and node.value.attr == 'path' \
                and isinstance(node.value.value, ast.Name) and node.value.value.id in sys_names:
            path_names.update(t.id for t in node.targets if isinstance(t, ast.Name))

    def is_path(node):
        if isinstance(node, ast.Attribute):
            return node.attr == 'path' and isinstance(node.value, ast.Name) and node.value.id in sys_names
        return isinstance(node, ast.Name) and node.id in path_names

    def is_target(node):  # sys.path, sys.path[i], sys.path[a:b]
        return is_path(node) or (isinstance(node, ast.Subscript) and is_path(node.value))

    found = []
    for node in ast.walk(tree):
        hit = False
        if isinstance(node, ast.Assign):
            hit = any(is_target(t) and not isinstance(t, ast.Name) for t in node.targets)  # p = ...: a rebinding
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            hit = is_target(node.target)
        elif isinstance(node, ast.Delete):
            hit = any(is_target(t) for t in node.targets)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            hit = (f.attr in MUTATING_METHODS and is_path(f.value)) or \
                (f.attr == 'addsitedir' and isinstance(f.value, ast.Name) and f.value.id in site_names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                ('sys.path' in node.value or 'addsitedir' in node.value):
            try:
                found += sys_path_edits(textwrap.dedent(node.value), filename, first_line + node.lineno - 1)
            except SyntaxError:  # prose, not a script
                pass
        if hit:
            found.append((first_line + node.lineno - 1, ast.get_source_segment(source, node) or ''))
    return sorted(found)


def _python_files():
    out = []
    for top in SCANNED:
        out += glob.glob(osp.join(REPO, top, '**', '*.py'), recursive=True)
    return sorted(osp.relpath(p, REPO).replace(osp.sep, '/') for p in out)


def _edits(rel):
    with open(osp.join(REPO, rel), encoding='utf-8') as f:
        return sys_path_edits(f.read(), rel)


# Planted examples: ``{sys}`` and ``{add}`` are filled in at test time, so that this file's own literals (which
# the walk reads as well) hold no sys.path edit.
PLANTED = [
    '{sys}.path.insert(0, ROOT)',
    'import os\n{sys}.path.append(os.getcwd())',
    '{sys}.path.extend([ROOT])',
    '{sys}.path.remove(ROOT)',
    '{sys}.path[0] = ROOT',
    '{sys}.path[:0] = [ROOT]',
    '{sys}.path = [ROOT] + {sys}.path',
    '{sys}.path += [ROOT]',
    'del {sys}.path[0]',
    'import sys as s\ns.path.insert(0, ROOT)',
    'from sys import path\npath.insert(0, ROOT)',
    'from sys import path as p\np[0] = ROOT',
    'p = {sys}.path\np.append(ROOT)',
    'import site\nsite.{add}(ROOT)',
    'def f():\n    if ROOT not in {sys}.path:\n        {sys}.path.insert(0, ROOT)',
    "SCRIPT = r'''\nimport sys\n{sys}.path.insert(0, sys.argv[1])\nprint(1)\n'''",
]
HARMLESS = [
    'print({sys}.path)',
    'paths = list({sys}.path)',
    'i = {sys}.path.index(ROOT)',
    'ok = ROOT in {sys}.path',
    'import os\nos.environ["PYTHONPATH"] = ROOT',
    'env = dict(PYTHONPATH=ROOT)',
    'path = []\npath.append(1)',
    'import os.path as osp\nosp.join(ROOT, "x")',
    'MSG = "{sys}.path edits are refused: no {sys}.path.insert"',
]


@pytest.mark.parametrize('snippet', PLANTED)
def test_detector_finds_a_planted_sys_path_edit(snippet):
    code = snippet.format(sys='sys', add='addsitedir')
    edits = sys_path_edits(code)
    assert len(edits) == 1, (code, edits)
    line, segment = edits[0]
    assert segment.splitlines()[0] in code.splitlines()[line - 1], (code, edits)  # the right line


@pytest.mark.parametrize('snippet', HARMLESS)
def test_detector_leaves_reading_sys_path_alone(snippet):
    assert sys_path_edits(snippet.format(sys='sys', add='addsitedir')) == []


def test_no_file_edits_sys_path():
    files = _python_files()
    assert len(files) > 100 and 'tools/infer.py' in files and 'irtoolkit/cli/infer.py' in files
    offenders = {rel: edits for rel in files for edits in [_edits(rel)] if edits}
    assert not offenders, ('sys.path edits (the package is installed: import it instead; a subprocess finds it '
                           f'too): {offenders}')
