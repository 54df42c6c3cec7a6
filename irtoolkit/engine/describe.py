"""``python irtoolkit/train.py --describe NAME``: what a registered model or arch accepts, as a table.

For a model: every key of its option schema — its own and those of the classes above it, each with the class that
declares it (the runner's keys are left out; ``--describe BaseModel`` lists them) — with what it accepts, its
default and its meaning, and the keys it renamed. For an arch (or a loss): the constructor's arguments and
defaults, and the first line of its docstring.
"""
import difflib
import inspect

from irtoolkit.config.options import BASE_SCHEMA, renamed_keys
from irtoolkit.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY, get_from_registry
from irtoolkit.config.schema import schema_rows
from irtoolkit.utils.errors import OptionError

__all__ = ['describe']


def _table(header, rows):
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: '| ' + ' | '.join(c.ljust(w) for c, w in zip(cells, widths)) + ' |'  # noqa: E731
    return '\n'.join([line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'] + [line(r) for r in rows])


def _doc_line(obj):
    """The first sentence of the docstring, on one line."""
    doc = ' '.join((inspect.getdoc(obj) or '').split())
    return doc.split('. ')[0].rstrip('.') + '.' if doc else ''


def describe_model(cls):
    """Every key of the model's schema with the class that declares it, from the top of its hierarchy down; for
    ``BaseModel`` also the runner's keys."""
    rows = []
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get('OPTION_SCHEMA')
        if own:
            rows += [(*row, klass.__name__) for row in schema_rows(own)]
    if cls.__name__ == 'BaseModel':
        rows = [(*row, 'runner') for row in schema_rows(BASE_SCHEMA)] + rows
    head = f'model {cls.__name__} ({cls.__module__}): {_doc_line(cls)}'
    renamed = renamed_keys(cls)
    tail = ''.join(f'\nrenamed: {old} -> {new}' for old, new in renamed.items())
    if not rows:
        return f'{head}\nno keys beyond the runner\'s (see --describe BaseModel){tail}'
    return f'{head}\n{_table(("key", "accepts", "default", "meaning", "declared by"), rows)}{tail}'


def describe_callable(kind, cls):
    sig = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls)
    rows = []
    for name, p in sig.parameters.items():
        if name == 'self' or p.kind in (p.VAR_POSITIONAL, ):
            continue
        default = 'required' if p.default is p.empty else repr(p.default)
        rows.append((f'**{name}' if p.kind == p.VAR_KEYWORD else name, default))
    head = f'{kind} {cls.__name__} ({cls.__module__}): {_doc_line(cls)}'
    return f'{head}\n{_table(("argument", "default"), rows)}'


def describe(name):
    """The table of the model, arch or loss registered as ``name`` (models first)."""
    from irtoolkit.models.base_model import BaseModel
    if name == 'BaseModel':
        return describe_model(BaseModel)
    for kind, registry in (('model', MODEL_REGISTRY), ('arch', ARCH_REGISTRY), ('loss', LOSS_REGISTRY)):
        if name in dict(iter(registry)) or name + '_basicsr' in dict(iter(registry)):
            obj = get_from_registry(registry, name, kind)
            return describe_model(obj) if kind == 'model' else describe_callable(kind, obj)
    known = sorted(k for r in (MODEL_REGISTRY, ARCH_REGISTRY, LOSS_REGISTRY) for k, _ in r)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    raise OptionError(f'--describe {name}: not a registered model, arch or loss'
                      + (f'; closest: {", ".join(close)}' if close else ''))
