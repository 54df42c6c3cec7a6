"""The report of ``irtk-validate-checkpoints``: ``checkpoints.csv``, ``checkpoints.md`` (iteration x metric) and
``checkpoints.png`` (each metric against the iteration), from the rows of
:func:`irtoolkit.engine.checkpoint_validation.validate_checkpoints`.

Periodic checkpoints (``net_g_<iter>``) make the table and the curves; ``net_g_latest`` and ``net_g_best`` are
reported separately (their own rows in the CSV, their own table in the Markdown, a dotted line in the plot). The
best periodic value of each column is in bold; the direction of a metric comes from ``lower_is_better`` (NIQE,
LPIPS ...: lower).
"""
import csv
import os
import os.path as osp

from irtoolkit.engine.checkpoint_validation import metric_columns

__all__ = ['write_report', 'markdown_report']

BASE_COLUMNS = ('checkpoint', 'iter', 'param_key', 'file')


def _is_periodic(row):
    return not row['checkpoint'].endswith(('_latest', '_best'))


def _best_values(rows, columns, lower_is_better):
    """{column: best value over the periodic rows}."""
    out = {}
    for c in columns:
        values = [r[c] for r in rows if _is_periodic(r) and r.get(c) is not None]
        if values:
            out[c] = (min if lower_is_better(c.split('/', 1)[1]) else max)(values)
    return out


def markdown_report(rows, title, lower_is_better=lambda m: False):
    """The Markdown text: the periodic checkpoints (iteration x metric, best in bold), then latest and best."""
    columns = metric_columns(rows)
    best = _best_values(rows, columns, lower_is_better)

    def cell(row, c):
        v = row.get(c)
        if v is None:
            return ''
        return f'**{v:.4f}**' if _is_periodic(row) and best.get(c) == v else f'{v:.4f}'

    periodic = [r for r in rows if _is_periodic(r)]
    special = [r for r in rows if not _is_periodic(r)]
    lines = [f'# {title}', '', f'{len(periodic)} periodic checkpoint(s); the best of each column in bold.', '',
             '| iter | ' + ' | '.join(columns) + ' |', '|---:|' + '---:|' * len(columns)]
    lines += [f'| {r["iter"]} | ' + ' | '.join(cell(r, c) for c in columns) + ' |' for r in periodic]
    if special:
        lines += ['', '| checkpoint | iter | ' + ' | '.join(columns) + ' |', '|---|---:|' + '---:|' * len(columns)]
        lines += [f'| {r["checkpoint"]} | {"" if r["iter"] is None else r["iter"]} | '
                  + ' | '.join(cell(r, c) for c in columns) + ' |' for r in special]
    return '\n'.join(lines) + '\n'


def write_csv(rows, path):
    columns = list(BASE_COLUMNS) + metric_columns(rows)
    with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: ('' if r.get(c) is None else (repr(r[c]) if isinstance(r[c], float) else r[c]))
                        for c in columns})


def write_plot(rows, path, title, lower_is_better=lambda m: False):
    """One panel per ``<set>/<metric>`` column: the periodic checkpoints against the iteration, the best marked;
    ``net_g_best`` / ``net_g_latest`` as dotted lines. Agg (no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    columns = metric_columns(rows)
    periodic = [r for r in rows if _is_periodic(r) and r['iter'] is not None]
    fig = Figure(figsize=(6.4, 2.6 * max(len(columns), 1)), tight_layout=True)
    FigureCanvasAgg(fig)
    best = _best_values(rows, columns, lower_is_better)
    for i, c in enumerate(columns):
        ax = fig.add_subplot(max(len(columns), 1), 1, i + 1)
        points = [(r['iter'], r[c]) for r in periodic if r.get(c) is not None]
        if points:
            ax.plot(*zip(*points), marker='o', label='net_g_<iter>')
            it = next(x for x, y in points if y == best[c])
            ax.plot([it], [best[c]], marker='*', markersize=14, linestyle='none', color='tab:red',
                    label=f'best {best[c]:.4f} @ {it}')
        for r in rows:
            if not _is_periodic(r) and r.get(c) is not None:
                ax.axhline(r[c], linestyle=':', color='tab:green' if r['checkpoint'].endswith('_best') else 'gray',
                           label=f'{r["checkpoint"]} {r[c]:.4f}')
        ax.set_ylabel(c + (' (lower is better)' if lower_is_better(c.split('/', 1)[1]) else ''))
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
        if i == 0:
            ax.set_title(title)
    if columns:
        fig.axes[-1].set_xlabel('iteration')
    fig.savefig(path, dpi=100)


def write_report(rows, out_dir, title, lower_is_better=lambda m: False):
    """``checkpoints.csv``, ``checkpoints.md`` and ``checkpoints.png`` in ``out_dir``; returns their paths and the
    Markdown text."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [osp.join(out_dir, f'checkpoints.{ext}') for ext in ('csv', 'md', 'png')]
    write_csv(rows, paths[0])
    text = markdown_report(rows, title, lower_is_better)
    with open(paths[1], 'w', encoding='utf-8') as f:
        f.write(text)
    write_plot(rows, paths[2], title, lower_is_better)
    return paths, text
