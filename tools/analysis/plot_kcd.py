"""Plot what KCD did in a run, from its work dir.

Usage::

    python tools/analysis/plot_kcd.py WORK_DIR [--out DIR] [--config CFG]

Writes four PNGs into ``DIR`` (default ``WORK_DIR/kcd_plots``):

* ``value_distribution.png``: at each stage, histograms of the mean
  knowledge value of the kept and of the dropped samples;
* ``kept_blended_dropped.png``: fractions of the training set kept as is,
  kept and blended with a dropped partner, and dropped, per stage;
* ``kept_per_class.png``: the kept fraction of every class at each stage
  (does condensation starve a class?); needs the training dataset, rebuilt
  from the config mmengine dumped into the work dir (or ``--config``);
  skipped, with the reason, when it cannot be built;
* ``sample_iterations.png``: samples trained on over the epochs, KCD
  against plain KD (the last point from the latest checkpoint).

The numbers come from :mod:`kcd_mm.analysis`.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))
import kcd_mm.compat  # noqa: E402,F401,I001  isort:skip
import matplotlib  # noqa: E402

from kcd_mm import analysis  # noqa: E402
from kcd_mm.records import (RECORD_FILE, SNAPSHOT_DIR,  # noqa: E402
                            check_consistency, read_records, read_snapshots)

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

KEPT_COLOR, BLEND_COLOR, DROP_COLOR = '#2b7bba', '#f2a93b', '#c8553d'
MAX_CLASS_BARS = 30  # above this, per-class fractions are drawn sorted


def _grid(count: int):
    cols = min(3, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows),
                             squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_values(snapshots, records, path: str) -> None:
    """(a) Mean knowledge values of kept vs dropped samples per stage."""
    epochs = {r['stage']: r['epoch'] for r in records}
    fig, axes = _grid(len(snapshots))
    for ax, snap in zip(axes, snapshots):
        kept, dropped = analysis.value_split(snap)
        finite = snap.mean_values[np.isfinite(snap.mean_values)]
        bins = np.histogram_bin_edges(finite, bins=30) if finite.size \
            else 30
        ax.hist(kept, bins=bins, color=KEPT_COLOR, alpha=0.7,
                label=f'kept ({len(kept)})')
        ax.hist(dropped, bins=bins, color=DROP_COLOR, alpha=0.7,
                label=f'dropped ({len(dropped)})')
        ax.set_title(f'stage {snap.stage} (after epoch '
                     f'{epochs.get(snap.stage, "?")})')
        ax.set_xlabel('mean knowledge value')
        ax.set_ylabel('samples')
        ax.legend(fontsize='small')
    fig.suptitle('Knowledge value of kept and dropped samples')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_fractions(records, path: str) -> None:
    """(b) Kept / blended / dropped fractions per stage, stacked."""
    frac = analysis.stage_fractions(records)
    x = np.arange(len(records))
    fig, ax = plt.subplots(figsize=(max(6.5, 3.5 + 0.8 * len(x)), 3.8))
    bottom = np.zeros(len(x))
    for key, color, label in (
            ('kept_plain', KEPT_COLOR, 'kept'),
            ('blended', BLEND_COLOR, 'kept, blended with a dropped sample'),
            ('dropped', DROP_COLOR, 'dropped')):
        ax.bar(x, frac[key], bottom=bottom, color=color, label=label,
               width=0.7)
        bottom += frac[key]
    ax.set_xticks(x)
    ax.set_xticklabels([f'{s}\n(ep {e})'
                        for s, e in zip(frac['stage'], frac['epoch'])])
    ax.set_xlabel('stage')
    ax.set_ylabel('fraction of the training set')
    ax.set_ylim(0, 1.0)
    ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), fontsize='small')
    ax.set_title('Kept, blended and dropped per stage')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_classes(fractions: np.ndarray, snapshots, names, path: str) -> None:
    """(c) Kept fraction of every class at each stage."""
    num_classes, count = fractions.shape[1], len(snapshots)
    bars = num_classes <= MAX_CLASS_BARS
    width = min(16.0, max(6.0, 2.0 + 0.2 * num_classes * count)) \
        if bars else 9.0
    fig, ax = plt.subplots(figsize=(width, 4.0))

    def color(i):  # dark to light, never too light to see on white
        return plt.get_cmap('viridis')(0.8 * i / max(count - 1, 1))

    if bars:
        bar = 0.8 / count
        x = np.arange(num_classes)
        for i, snap in enumerate(snapshots):
            ax.bar(x + (i - (count - 1) / 2) * bar, fractions[i],
                   width=bar, color=color(i),
                   label=f'stage {snap.stage}')
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=45 if num_classes > 8 else 0,
                           ha='right' if num_classes > 8 else 'center')
        ax.set_xlabel('class')
    else:
        for i, snap in enumerate(snapshots):
            ax.plot(np.sort(fractions[i]), color=color(i),
                    label=f'stage {snap.stage}')
        ax.set_xlabel('classes, sorted by kept fraction')
    for i, snap in enumerate(snapshots):
        ax.axhline(len(snap.kept) / snap.num_samples, linestyle=':',
                   linewidth=1.0, color=color(i))
    ax.set_ylabel('kept fraction of the class')
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize='small', loc='upper left', bbox_to_anchor=(1.01, 1.0))
    ax.set_title('Kept fraction per class (dotted: overall)')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(epochs, kcd, kd, path: str) -> None:
    """(d) Samples trained on over the epochs, KCD against plain KD."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(epochs, kd, 'o--', color='grey', label='plain KD')
    ax.plot(epochs, kcd, 'o-', color=KEPT_COLOR, label='KCD')
    if kd[-1]:
        ax.text(0.97, 0.05, f'after epoch {epochs[-1]}: {kcd[-1]} samples'
                f' = {100 * kcd[-1] / kd[-1]:.1f}% of KD',
                transform=ax.transAxes, ha='right', va='bottom')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('epoch')
    ax.set_ylabel('samples trained on (cumulative)')
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title('Training cost: KCD against plain KD')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot the stages of a KCD run from its work dir')
    parser.add_argument('work_dir', help='work dir of a KCD run')
    parser.add_argument('--out', help='output folder '
                        '(default: WORK_DIR/kcd_plots)')
    parser.add_argument('--config', help='config to rebuild the training '
                        'dataset from (default: the one in WORK_DIR)')
    parser.add_argument('--record-file', default=RECORD_FILE,
                        help="KCDHook's record_file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = args.out or osp.join(args.work_dir, 'kcd_plots')
    os.makedirs(out, exist_ok=True)
    records = read_records(args.work_dir, args.record_file)
    snapshots = read_snapshots(args.work_dir)
    for problem in check_consistency(records, snapshots):
        print(f'warning: {problem}')
    written = []

    def target(name):
        written.append(osp.join(out, name))
        return written[-1]

    if snapshots:
        plot_values(snapshots, records, target('value_distribution.png'))
    else:
        print(f'skipped value_distribution.png: no snapshots in '
              f'{osp.join(args.work_dir, SNAPSHOT_DIR)}')
    plot_fractions(records, target('kept_blended_dropped.png'))

    config = args.config or analysis.find_config(args.work_dir)
    if not snapshots:
        print('skipped kept_per_class.png: no snapshots')
    elif config is None:
        print(f'skipped kept_per_class.png: no config in {args.work_dir} '
              'to rebuild the training dataset from (give --config)')
    else:
        try:
            dataset, labels = analysis.train_labels(
                config, snapshots[-1].num_samples)
        except Exception as e:  # report and go on with the other plots
            print(f'skipped kept_per_class.png: cannot build the training '
                  f'dataset from {config}: {type(e).__name__}: {e}')
        else:
            fractions, names = analysis.present_class_fractions(
                labels, snapshots, dataset)
            plot_classes(fractions, snapshots, names,
                         target('kept_per_class.png'))
            last, worst = snapshots[-1], int(np.nanargmin(fractions[-1]))
            print(f'stage {last.stage}: least kept class {names[worst]!r} '
                  f'({100 * fractions[-1][worst]:.1f}% kept; overall '
                  f'{100 * len(last.kept) / last.num_samples:.1f}%)')

    checkpoint = analysis.find_checkpoint(args.work_dir)
    final = analysis.read_progress(checkpoint) if checkpoint else None
    epochs, kcd, kd = analysis.sample_curve(records, final)
    plot_samples(epochs, kcd, kd, target('sample_iterations.png'))
    for path in written:
        print(path)


if __name__ == '__main__':
    main()
