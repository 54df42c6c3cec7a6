"""Option schemas: which keys a recipe may hold, their types, allowed values, defaults and meaning.

A schema maps a key (or a regex written ``re:...``) to one of:

* a type or a tuple of types (``int``, ``(list, str)``; :data:`NUM` is int or float, never bool);
* a nested schema (a dict) for a mapping (also inside a tuple: ``(int, {...})`` accepts an int or a mapping whose
  keys are checked);
* a predicate (a callable returning a bool);
* :data:`ANY` (checked later by the builder that consumes it);
* an :class:`Option`: any of the above plus ``default``, ``choices`` and a one-line ``doc``.

``None`` (YAML ``~``) is always accepted: it means "unset". Models extend the base schema with their own
``OPTION_SCHEMA`` (:func:`merge_schema`); :func:`fill_defaults` writes the defaults into the options once, while
they are resolved, so model code reads ``opt[key]`` and never carries a default of its own.
"""
import difflib
import re

from irtoolkit.utils.errors import OptionError

__all__ = ['ANY', 'NUM', 'Option', 'check_options', 'option_problems', 'merge_schema', 'fill_defaults', 'schema_rows',
           'true_false_auto']

ANY = object()
NUM = (int, float)
_NO_DEFAULT = object()


def true_false_auto(v):
    """true, false or auto"""
    return isinstance(v, bool) or v == 'auto'


class Option:
    """One key of a schema: ``spec`` (type, tuple, predicate, nested dict or ANY), ``default``, ``choices``, ``doc``.

    ``Option(int, 256, doc='patches sampled per image')``; ``Option(str, 'network', choices=('network',
    'residual'), doc='...')``. Without ``default`` the key stays unset when the recipe omits it.
    """

    def __init__(self, spec=ANY, default=_NO_DEFAULT, choices=None, doc=''):
        self.spec, self.default, self.choices, self.doc = spec, default, tuple(choices or ()), doc

    @property
    def has_default(self):
        return self.default is not _NO_DEFAULT


def _spec(entry):
    return entry.spec if isinstance(entry, Option) else entry


def expected(spec):
    """Words for what ``spec`` accepts, for error messages and ``--describe``."""
    if isinstance(spec, Option):
        if spec.choices:
            return 'one of ' + ', '.join(map(str, spec.choices))
        return expected(spec.spec)
    if spec is ANY:
        return 'any'
    if isinstance(spec, tuple):
        return 'a number' if spec == NUM else ' or '.join(expected(s) for s in spec)
    if isinstance(spec, dict):
        return 'a mapping'
    if isinstance(spec, type):
        return spec.__name__
    return getattr(spec, '__doc__', None) or 'a valid value (see the docs)'


def matches(value, spec):
    if isinstance(spec, Option):
        if value is not None and spec.choices and value not in spec.choices:
            return False
        return matches(value, spec.spec)
    if spec is ANY or value is None:
        return True
    if isinstance(spec, tuple):
        return any(matches(value, s) for s in spec)
    if isinstance(spec, dict):
        return isinstance(value, dict)
    if spec is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(spec, type):
        return isinstance(value, spec)
    return bool(spec(value))


def lookup(schema, key):
    if key in schema:
        return schema[key]
    for pattern, spec in schema.items():
        if pattern.startswith('re:') and re.match(pattern[3:], key):
            return spec
    return None


def option_problems(opt, schema, prefix=''):
    """Every unknown key and wrongly typed value of ``opt``, one line each (``key: problem``)."""
    found = []
    for key, value in opt.items():
        full = f'{prefix}{key}'
        entry = lookup(schema, str(key))
        if entry is None:
            known = [k for k in schema if not k.startswith('re:')]
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = f'did you mean {", ".join(close)}?' if close else f'known keys: {", ".join(sorted(known))}'
            found.append(f'{full}: unknown option; {hint}')
        elif not matches(value, entry):
            found.append(f'{full}: expected {expected(entry)}, got {type(value).__name__} {value!r}')
        elif isinstance(value, dict) and _mapping_schema(entry) is not None:
            found.extend(option_problems(value, _mapping_schema(entry), full + '.'))
    return found


def _mapping_schema(entry):
    """The nested schema a mapping value is checked against: the entry's own, or the mapping member of a union
    (``(int, {'size': int, ...})``: an int shorthand or a checked mapping); None when it has none."""
    spec = _spec(entry)
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, tuple):
        return next((s for s in spec if isinstance(s, dict)), None)
    return None


def check_options(opt, schema, where=''):
    """Raise one OptionError listing every problem of :func:`option_problems`, each line prefixed by ``where``
    (the file)."""
    found = option_problems(opt, schema)
    if found:
        raise OptionError('\n'.join(where + p for p in found))


def merge_schema(base, extra):
    """Recursively merge ``extra`` (a model's OPTION_SCHEMA) into a copy of ``base``."""
    out = dict(base)
    for k, v in (extra or {}).items():
        old = _spec(out.get(k))
        new = _spec(v)
        if isinstance(new, dict) and isinstance(old, dict):
            out[k] = merge_schema(old, new)
        else:
            out[k] = v
    return out


def _has_defaults(schema):
    return any((isinstance(e, Option) and e.has_default) or (isinstance(_spec(e), dict) and _has_defaults(_spec(e)))
               for e in schema.values())


def fill_defaults(opt, schema):
    """Write every schema default that ``opt`` lacks (in place); a missing section with defaults is created."""
    for key, entry in schema.items():
        if key.startswith('re:'):
            continue
        spec = _spec(entry)
        if isinstance(spec, dict):
            if opt.get(key) is None and _has_defaults(spec):
                opt[key] = {}
            if isinstance(opt.get(key), dict):
                fill_defaults(opt[key], spec)
        elif isinstance(entry, Option) and entry.has_default and key not in opt:
            opt[key] = _copy(entry.default)
    return opt


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def readable_key(key):
    """A schema key for people: ``re:^optim_\\w+$`` -> ``optim_<name>``."""
    if not key.startswith('re:'):
        return key
    key = key[3:].lstrip('^').rstrip('$')
    for pattern, words in (('(train|val|test)(_.*)?', '<train|val*|test*>'), ('\\w+', '<name>'), ('.*', '<any>')):
        key = key.replace(pattern, words)
    return key


def schema_rows(schema, prefix=''):
    """``(key, accepted, default, meaning)`` rows of ``schema``, nested keys dotted, for ``--describe``."""
    rows = []
    for key, entry in schema.items():
        spec, key = _spec(entry), readable_key(key)
        doc = entry.doc if isinstance(entry, Option) else ''
        default = repr(entry.default) if isinstance(entry, Option) and entry.has_default else ''
        if isinstance(spec, dict):
            if doc:
                rows.append((prefix + key, 'a mapping', default, doc))
            rows.extend(schema_rows(spec, f'{prefix}{key}.'))
        elif _mapping_schema(entry) is not None:  # a union with a mapping: the union's row, then the mapping's keys
            rows.append((prefix + key, expected(entry), default, doc))
            rows.extend(schema_rows(_mapping_schema(entry), f'{prefix}{key}.'))
        else:
            rows.append((prefix + key, expected(entry), default, doc))
    return rows
