"""Recipes that inherit: ``_base_: [a.yml, b.yml]`` merged in order, then the file's own keys (MMEngine's rule).

* ``_base_`` is a path or a list of paths, relative to the file that names them; bases may have bases.
* Mappings merge key by key, recursively; any other value (lists included) replaces the base's.
* ``_delete_: true`` inside a mapping replaces the base's mapping instead of merging into it (e.g. another
  scheduler type whose keys differ).
* ``~`` sets a key to None (unset); it does not remove it.

:func:`load_recipe` returns the fully resolved mapping, without ``_base_`` / ``_delete_``; every problem is one
:class:`~irtoolkit.utils.registry.OptionError` naming the file (and line, for YAML errors).
"""
import os.path as osp
import re

import yaml

from irtoolkit.utils.errors import OptionError

__all__ = ['SafeLoader', 'yaml_load', 'load_recipe', 'merge_recipe']

BASE_KEY, DELETE_KEY = '_base_', '_delete_'


class SafeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` / ``2e5`` as numbers (plain YAML 1.1 reads them as strings)."""


SafeLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$''', re.X), list('-+0123456789.'))


def yaml_load(path_or_text):
    """Parse YAML with the safe loader: a file path or a YAML string (no inheritance; see :func:`load_recipe`)."""
    if osp.isfile(str(path_or_text)):
        with open(path_or_text, encoding='utf-8') as f:
            return yaml.load(f, Loader=SafeLoader)
    return yaml.load(path_or_text, Loader=SafeLoader)


def _read_mapping(path):
    if not osp.isfile(path):
        raise OptionError(f'{path}: options file not found')
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.load(f, Loader=SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f'line {mark.line + 1}, column {mark.column + 1}: ' if mark else ''
        problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
        raise OptionError(f'{path}: not valid YAML: {where}{problem}') from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionError(f'{path}: expected a mapping at the top level, got {type(data).__name__}')
    return data


def merge_recipe(base, child):
    """``child`` over ``base``: mappings merge recursively (unless ``_delete_: true``), other values replace."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            replace = value.pop(DELETE_KEY, False)
            if isinstance(out.get(key), dict) and not replace:
                out[key] = merge_recipe(out[key], value)
                continue
            value = merge_recipe({}, value)  # strip nested _delete_ markers
        out[key] = value
    return out


def load_recipe(path, _chain=()):
    """The options of ``path`` with its ``_base_`` files merged in; paths in ``_base_`` are relative to ``path``."""
    path = osp.abspath(path)
    if path in _chain:
        cycle = ' -> '.join(osp.basename(p) for p in _chain + (path, ))
        raise OptionError(f'{_chain[-1]}: _base_: inheritance cycle: {cycle}')
    data = _read_mapping(path)
    bases = data.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        raise OptionError(f'{path}: _base_: expected a path or a list of paths, got {type(bases).__name__}')
    merged = {}
    for i, base in enumerate(bases):
        if not isinstance(base, str):
            raise OptionError(f'{path}: _base_[{i}]: expected a path, got {type(base).__name__}')
        base_path = osp.normpath(osp.join(osp.dirname(path), osp.expanduser(base)))
        if not osp.isfile(base_path):
            raise OptionError(f'{path}: _base_[{i}]: not found: {base_path}')
        merged = merge_recipe(merged, load_recipe(base_path, _chain + (path, )))
    return merge_recipe(merged, data)
