"""Optimisers by name (``train.optim_<x>.type``), from four packages searched in this order:

1. ``torch.optim`` (Adam, AdamW, SGD, RAdam, Adafactor, ...);
2. ``schedulefree`` (Defazio et al., "The Road Less Scheduled", arXiv:2405.15682): AdamWScheduleFree,
   SGDScheduleFree, RAdamScheduleFree and their ``Reference``/``Paper`` variants; the training loop's side of them
   (train/eval weights) is :mod:`irtoolkit.utils.schedule_free`;
3. ``prodigyopt`` (Mishchenko & Defazio, "Prodigy", arXiv:2306.06101): Prodigy, whose ``lr`` is a multiplier of its
   own step-size estimate, usually 1.0;
4. ``pytorch_optimizer`` (its registry, ``get_supported_optimizers``/``load_optimizer``): Adan, ADOPT, SOAP, Lion,
   Lamb and a hundred more.

Names are case-insensitive (``pytorch_optimizer``'s own rule, applied to every source, so that ``radam`` and ``RAdam``
mean the same class). A name two sources share resolves to the earlier one: ``torch.optim`` wins over
``pytorch_optimizer``'s Adadelta, Adafactor, Adamax, ASGD, Muon and RAdam so that a recipe's name keeps the meaning it
always had, and ``prodigyopt`` (the authors' code) wins over ``pytorch_optimizer``'s Prodigy. ``<source>.<Name>``
picks a source explicitly, e.g. ``pytorch_optimizer.RAdam``. Sources after the first are imported only when a name
is not found earlier (``pytorch_optimizer`` takes seconds to import).

Refused: optimisers whose ``step`` needs a closure (LBFGS, the ``*Closure`` schedule-free variants): the iteration
contract steps once per :meth:`~irtoolkit.models.base_model.BaseModel.optimize` without one. Not offered:
``schedulefree``'s experimental ``ScheduleFreeWrapper*``, which wrap an optimiser object (they are no
``torch.optim.Optimizer`` over parameters).
"""
import difflib
import functools
import importlib
import inspect
import re

import torch

from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import check_kwargs
from irtoolkit.utils.schedule_free import is_schedule_free

__all__ = ['SOURCES', 'build_optimizer', 'find_optimizer', 'known_optimizers']

SOURCES = ('torch.optim', 'schedulefree', 'prodigyopt', 'pytorch_optimizer')


def _optimizer_classes(module):
    return {n: c for n, c in vars(module).items() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)
            and c is not torch.optim.Optimizer}


@functools.lru_cache(maxsize=None)
def known_optimizers(source):
    """``{lower-case name: class}`` of one source (imported on the first call)."""
    if source == 'pytorch_optimizer':
        from pytorch_optimizer import get_supported_optimizers, load_optimizer
        return {n.lower(): load_optimizer(n) for n in get_supported_optimizers()}
    return {n.lower(): c for n, c in _optimizer_classes(importlib.import_module(source)).items()}


def find_optimizer(name, key='train.optim_g'):
    """The optimiser class of ``name`` (``Name`` or ``<source>.Name``) and its source; an unknown name is a one-line
    :class:`OptionError` naming ``<key>.type`` and the closest names across every source."""
    if not name:
        raise OptionError(f'{key}.type: missing (an optimizer name, docs/optimizers.md)')
    source, _, short = str(name).rpartition('.')
    if source and source not in SOURCES:
        raise OptionError(f'{key}.type: {name!r}: unknown source {source!r}; sources: {", ".join(SOURCES)}')
    for src in (source, ) if source else SOURCES:
        cls = known_optimizers(src).get(short.lower())
        if cls is not None:
            return cls, src
    shown = {}  # lower-case name -> "Name (source)" of the source it resolves to
    for src in SOURCES:
        for n, c in known_optimizers(src).items():
            if _refusal(c) is None:
                shown.setdefault(n, f'{c.__name__} ({src})')
    hint = ', '.join(shown[n] for n in difflib.get_close_matches(short.lower(), list(shown), n=4, cutoff=0.6))
    raise OptionError(f'{key}.type: unknown optimizer {name!r}; '
                      + (f'closest: {hint}' if hint else f'sources: {", ".join(SOURCES)} (docs/optimizers.md)'))


def _refusal(cls):
    """Why ``cls`` cannot step in the iteration contract, or None."""
    closure = inspect.signature(cls.step).parameters.get('closure')
    needs = f'{cls.__name__} needs a closure in step(), and BaseModel.optimize steps once without one'
    if cls.__name__.endswith('Closure'):
        return f'{needs}; use {cls.__name__[:-len("Closure")]}'
    if closure is not None and closure.default is inspect.Parameter.empty:
        return needs
    return None


@functools.lru_cache(maxsize=None)
def _names_read(cls):
    """The quoted identifiers in the modules of ``cls`` and its bases: what its code may read from ``**kwargs`` or
    from a parameter group (``kwargs.get('use_palm')``, ``group['weight_decouple']``)."""
    words = set()
    for c in cls.__mro__:
        if c.__module__.startswith(('torch.', 'builtins')):
            continue
        try:
            words |= set(re.findall(r'''['"](\w+)['"]''', inspect.getsource(inspect.getmodule(c))))
        except (OSError, TypeError):
            return None
    return words


def _checked_signature(cls):
    """``cls.__init__``'s signature for :func:`check_kwargs`. Most of ``pytorch_optimizer``'s constructors end in
    ``**kwargs`` and read at most a few of them: those are checked against the named arguments plus the names the
    optimiser's code reads (:func:`_names_read`), so that a misspelt argument is refused instead of swallowed."""
    sig = inspect.signature(cls.__init__)
    var_kw = [p for p in sig.parameters.values() if p.kind == p.VAR_KEYWORD]
    read = _names_read(cls) if var_kw else None
    if read is None:
        return cls.__init__
    named = [p for p in sig.parameters.values() if p not in var_kw]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None)
             for n in sorted(read - set(sig.parameters)) if n.isidentifier()]

    def signature_only():
        pass

    signature_only.__signature__ = sig.replace(parameters=named + extra)
    return signature_only


def build_optimizer(params, opt, key='train.optim_g'):
    """The optimiser of ``opt`` (``{type: <name>, <constructor arguments>}``) over ``params``; arguments are checked
    against its constructor (one-line errors naming ``<key>.<argument>``). A schedule-free optimiser is returned in
    train mode (``schedulefree``'s start in eval mode)."""
    opt = dict(opt)
    name = opt.pop('type', None)
    cls, _ = find_optimizer(name, key)
    refusal = _refusal(cls)
    if refusal:
        raise OptionError(f'{key}.type: {refusal}')
    if isinstance(opt.get('betas'), list):
        opt['betas'] = tuple(opt['betas'])
    check_kwargs(_checked_signature(cls), {'params': params, **opt}, key, cls.__name__)
    optimizer = cls(params, **opt)
    if is_schedule_free(optimizer):
        optimizer.train()
    return optimizer
