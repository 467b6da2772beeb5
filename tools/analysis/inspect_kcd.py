"""Print what KCD did in a run: the stages, and which samples it dropped.

Usage::

    python tools/analysis/inspect_kcd.py WORK_DIR [--top K]
        [--max-dropped M | --all-dropped] [--dropped-csv FILE]
        [--config CFG]

Prints

* the stage table: stage, epoch, kept, blended, dropped, kept %, samples
  trained on against plain KD, the knowledge value's mean and std over the
  stage, and the E-step's time;
* the K most and the K least valuable samples at the last stage (index,
  score, mean value, status, class, file);
* the samples dropped at the last stage, least valuable first, with their
  files, so that one can look at the images KCD decided it could do
  without: the first ``--max-dropped`` (20) and a ``... and N more`` line;
  ``--all-dropped`` prints all of them, ``--dropped-csv`` writes all of
  them to a CSV file.

Values and scores are printed with five significant digits (``{:.5g}``):
a confident student's small values (or a near-constant stage's value
std) keep their digits instead of rounding to 0.0000, and values near 1
keep their four decimals.

Classes and files come from the training dataset, rebuilt from the config
mmengine dumped into the work dir (or ``--config``); without it the
columns stay empty. The numbers come from :mod:`kcd_mm.analysis`.
"""
import argparse
import csv
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))
import kcd_mm.compat  # noqa: E402,F401,I001  isort:skip
import numpy as np  # noqa: E402
import torch  # noqa: E402

from kcd_mm import analysis  # noqa: E402
from kcd_mm.core.condensation import rank_samples  # noqa: E402
from kcd_mm.records import (RECORD_FILE, SNAPSHOT_DIR,  # noqa: E402
                            check_consistency, read_records, read_snapshots)

TABLE = (('stage', 5, '{:d}'), ('epoch', 5, '{:d}'), ('kept', 9, '{:d}'),
         ('blended', 8, '{:d}'), ('dropped', 9, '{:d}'),
         ('kept%', 6, '{:.1f}'), ('samples', 11, '{:d}'),
         ('kd_samples', 11, '{:d}'), ('vs_kd%', 6, '{:.1f}'),
         ('value_mean', 10, '{:.5g}'), ('value_std', 9, '{:.5g}'),
         ('estep_ms', 9, '{:.1f}'))


def stage_rows(records):
    """The stage table's values, one tuple per record (TABLE's columns)."""
    rows = []
    for r in records:
        n, kd = r['num_samples'], r['full_kd_sample_iters']
        rows.append((r['stage'], r['epoch'], r['kept'], r['blended'],
                     r['dropped'], 100.0 * r['kept'] / n, r['sample_iters'],
                     kd, 100.0 * r['sample_iters'] / max(kd, 1),
                     r['value_mean'], r['value_std'],
                     1000.0 * r['estep_seconds']))
    return rows


def _line(cells, widths):
    return ' '.join(str(c).rjust(w) for c, w in zip(cells, widths))


def print_stage_table(records) -> None:
    widths = [max(w, len(name)) for name, w, _ in TABLE]
    print(_line([name for name, _, _ in TABLE], widths))
    for row in stage_rows(records):
        print(_line([fmt.format(v) for v, (_, _, fmt) in zip(row, TABLE)],
                    widths))


class SampleInfo:
    """Class names and file paths of samples, when the dataset is known."""

    def __init__(self, dataset=None, labels=None) -> None:
        self.dataset = dataset
        self.labels = labels
        self.names = None
        if labels is not None:
            self.names = analysis.class_names(dataset, int(labels.max()) + 1)

    def classes(self, indices):
        if self.labels is None:
            return ['-'] * len(indices)
        return [self.names[self.labels[i]] for i in indices]

    def paths(self, indices):
        if self.dataset is None:
            return ['-'] * len(indices)
        return [p or '-' for p in analysis.sample_paths(self.dataset,
                                                        indices)]


def _status(snap):
    """Per-sample status at a stage (see STATUS_HELP)."""
    status = np.where(snap.kept_mask(), 'kept', 'dropped').astype(object)
    status[snap.tail] = 'kept_tail'
    status[snap.lost] = 'dropped_blended'
    return status


STATUS_HELP = ('status: kept; kept_tail (kept, blended with a dropped '
               'partner); dropped_blended (dropped, its pixels blended into '
               'a kept_tail sample); dropped')


def print_samples(title, indices, snap, status, info, extra=None) -> None:
    """A left-aligned table of samples; ``status`` from :func:`_status`,
    ``extra`` = (column, values)."""
    header = ['index', 'score', 'mean_value', 'status', 'class']
    if extra is not None:
        header.append(extra[0])
    rows = []
    for n, (i, cls) in enumerate(zip(indices, info.classes(indices))):
        row = [f'{i:d}', f'{snap.scores[i]:.5g}', f'{snap.mean_values[i]:.5g}',
               status[i], cls]
        if extra is not None:
            row.append(str(extra[1][n]))
        rows.append(row)
    widths = [max(len(r[c]) for r in rows + [header])
              for c in range(len(header))]
    print(f'\n{title}')
    for row, path in zip([header] + rows, ['file'] + info.paths(indices)):
        print('  '.join(c.ljust(w) for c, w in zip(row, widths)) + '  ' +
              path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Print the stages of a KCD run and the samples it '
        'dropped')
    parser.add_argument('work_dir', help='work dir of a KCD run')
    parser.add_argument('--top', type=int, default=10,
                        help='most/least valuable samples to list')
    parser.add_argument('--max-dropped', type=int, default=20,
                        help='dropped samples to print (0: all)')
    parser.add_argument('--all-dropped', action='store_true',
                        help='print every dropped sample')
    parser.add_argument('--dropped-csv',
                        help='write every dropped sample to this CSV file')
    parser.add_argument('--config', help='config to rebuild the training '
                        'dataset from (default: the one in WORK_DIR)')
    parser.add_argument('--record-file', default=RECORD_FILE,
                        help="KCDHook's record_file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    records = read_records(args.work_dir, args.record_file)
    print(f'KCD run in {args.work_dir}: {len(records)} stage(s), '
          f'N = {records[-1]["num_samples"] if records else "?"}\n')
    print_stage_table(records)
    checkpoint = analysis.find_checkpoint(args.work_dir)
    final = analysis.read_progress(checkpoint) if checkpoint else None
    if final is not None and records and \
            final['epoch'] > records[-1]['epoch']:
        done, kd = final['sample_iters'], final['full_kd_sample_iters']
        print(f"\nat {osp.basename(checkpoint)} (epoch {final['epoch']}): "
              f'{done} samples trained on, plain KD {kd} '
              f'({100 * done / max(kd, 1):.1f}%)')

    snapshots = read_snapshots(args.work_dir)
    for problem in check_consistency(records, snapshots):
        print(f'warning: {problem}')
    if not snapshots:
        print(f'\nno snapshots in '
              f'{osp.join(args.work_dir, SNAPSHOT_DIR)}: '
              'no per-sample listing')
        return
    snap = snapshots[-1]
    info = SampleInfo()
    config = args.config or analysis.find_config(args.work_dir)
    if config is None:
        print(f'\nno config in {args.work_dir}: classes and files unknown '
              '(give --config)')
    else:
        try:
            info = SampleInfo(
                *analysis.train_labels(config, snap.num_samples))
        except Exception as e:  # list the samples without them
            print(f'\ncannot build the training dataset from {config} '
                  f'({type(e).__name__}: {e}): classes and files unknown')

    order = rank_samples(torch.from_numpy(snap.scores)).numpy()  # E-step's
    status = _status(snap)
    k = max(0, min(args.top, snap.num_samples))
    print(f'\nsamples at stage {snap.stage}, best score first; '
          f'{STATUS_HELP}')
    print_samples(f'{k} most valuable samples at stage {snap.stage}:',
                  order[:k], snap, status, info)
    print_samples(f'{k} least valuable samples at stage {snap.stage}:',
                  order[::-1][:k], snap, status, info)

    dropped = snap.dropped()
    dropped = dropped[np.lexsort((dropped, snap.scores[dropped]))]
    since = analysis.dropped_since(snapshots)
    shown = dropped if args.all_dropped or args.max_dropped <= 0 else \
        dropped[:args.max_dropped]
    print_samples(
        f'{len(dropped)} samples dropped at stage {snap.stage} '
        '(least valuable first):', shown, snap, status, info,
        extra=('since_stage', [int(since[i]) for i in shown]))
    if info.dataset is not None and len(dropped) and \
            analysis.sample_paths(info.dataset, dropped[:1]) == [None]:
        print(f'({type(info.dataset).__name__} holds its images in memory, '
              'no files: sample i is dataset[i])')
    if len(shown) < len(dropped):
        print(f'... and {len(dropped) - len(shown)} more (--all-dropped '
              'prints all, --dropped-csv writes all)')
    if args.dropped_csv:
        os.makedirs(osp.dirname(osp.abspath(args.dropped_csv)),
                    exist_ok=True)
        with open(args.dropped_csv, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['index', 'score', 'mean_value', 'since_stage',
                             'class', 'file'])
            for i, cls, path in zip(dropped, info.classes(dropped),
                                    info.paths(dropped)):
                writer.writerow([int(i), float(snap.scores[i]),
                                 float(snap.mean_values[i]), int(since[i]),
                                 cls, path])
        print(f'wrote {args.dropped_csv}')


if __name__ == '__main__':
    main()
