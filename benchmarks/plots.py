"""The benchmark's plots, drawn into docs/img.

``bench_MODE_accuracy_vs_samples.png``: held-out and test top-1 against
the samples trained on (KD = 1), one line per arm over the budgets; of
the last checkpoint, or in a mode with verdicts of the best held-out
one, the checkpoint the verdicts judge.
``bench_MODE_kept_fraction.png``: the fraction of the training set each
seed-0 arm trains on, epoch by epoch.
"""
import os
import os.path as osp
from typing import Dict, List

from arms import ARMS, LABELS
from modes import ROOT, Mode

# Ablations drawn on an arm's line in the accuracy plot.
PLOTTED_AS = {'summary=False': 'kcd_prune'}
COLORS = dict(student='#777777', kd='#000000', kd_60k='#555555',
              kcd='#2b7bba', kcd_stage='#8e6bbf', kcd_prune='#76b7e5',
              random='#c8553d', infobatch='#3a9d5d', kcd_60k='#1a4f7a',
              kd_60k_wall='#999999', random_60k='#e07b5f',
              per_epoch_random='#d4a017', per_epoch_random_60k='#d4a017',
              infobatch_60k='#3a9d5d')


def plot(results: List[Dict], rows: List[Dict], mode: Mode,
         mode_name: str) -> List[str]:
    """Draw both plots of a mode into docs/img.

    Args:
        results (list[dict]): :func:`arms.run_arm`'s results.
        rows (list[dict]): :func:`report.aggregate`'s rows.
        mode (Mode): The benchmark setting.
        mode_name (str): ``quick`` or ``full``.

    Returns:
        list[str]: The two images' paths.
    """
    import matplotlib
    matplotlib.use('Agg')
    img = osp.join(ROOT, 'docs', 'img')
    os.makedirs(img, exist_ok=True)
    return [_accuracy_plot(rows, mode, mode_name, img),
            _kept_plot(results, mode, mode_name, img)]


def _accuracy_plot(rows: List[Dict], mode: Mode, mode_name: str,
                   img: str) -> str:
    """Top-1 against samples trained on, held-out and test side by side."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    # The verdicts judge the best held-out checkpoint: draw what they use.
    best = mode.verdicts
    band = any(r['arm'] == 'kd' for r in rows)  # drawn for 'kd' only
    for ax, key in zip(axes, ('holdout', 'test')):
        value, spread = ((f'{key}_best', f'{key}_best_sd') if best else
                         (f'{key}_top1', f'{key}_sd'))
        lines = {}
        for r in rows:  # an arm's line, with the ablations drawn as one
            arm = PLOTTED_AS.get(r.get('variant'), r['arm'])
            if r.get('variant') and r['variant'] not in PLOTTED_AS:
                continue
            lines.setdefault(arm, []).append(
                (r['samples_vs_kd'], r[value], r[spread]))
        # Frame the arms that stay near KD; a collapse would flatten them.
        near = [y for arm, pts in lines.items() for _, y, _ in pts
                if not arm.startswith('infobatch')]
        low, high = min(near) - 0.6, max(near) + 0.4
        for arm in ARMS:
            if arm not in lines or arm == 'kd_60k_wall':  # KD's rerun
                continue
            xs, ys, sd = zip(*sorted(lines[arm]))
            if arm == 'kd':  # the band: KD's mean +- one std, to match
                ax.axhspan(ys[0] - sd[0], ys[0] + sd[0], color='#000000',
                           alpha=0.08, linewidth=0)
            shown = [max(y, low + 0.1) for y in ys]
            ax.errorbar(xs, shown, yerr=sd, marker='o', capsize=3,
                        color=COLORS[arm], label=LABELS[arm],
                        linestyle='-' if len(xs) > 1 else 'none')
            for x, y in zip(xs, ys):
                if y < low:  # off the frame: an arrow and its value
                    ax.annotate(f'{y:.1f}', (x, low + 0.1),
                                xytext=(x + 0.01, low + 0.35),
                                color=COLORS[arm], fontsize=7,
                                arrowprops=dict(arrowstyle='->',
                                                color=COLORS[arm]))
        ax.set_ylim(low, high)
        ax.set_xlabel("samples trained on / KD's")
        ax.set_ylabel(f'{key} top-1 (%)')
        ax.set_title(f'last {mode.holdout:,} of the training file'
                     if key == 'holdout' else 'the 10,000 test images')
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=3, fontsize=7)
    fig.suptitle(f'Fashion-MNIST, {mode.n_train:,} training images, '
                 f'{mode.epochs} epochs ({mode_name} mode), '
                 f'{"best held-out" if best else "last"} checkpoint'
                 + ('; band: KD mean ± std' if band else ''))
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = osp.join(img, f'bench_{mode_name}_accuracy_vs_samples.png')
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _kept_plot(results: List[Dict], mode: Mode, mode_name: str,
               img: str) -> str:
    """The fraction of the training set trained on, epoch by epoch."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = dict(kcd=('-', 3.5), kcd_stage=('-', 2), kcd_prune=('--', 2),
                  random=(':', 2), infobatch=('-', 1.5), kcd_60k=('-.', 2),
                  random_60k=(':', 2), per_epoch_random=('--', 1.5),
                  per_epoch_random_60k=('--', 1.5),
                  infobatch_60k=('-', 1.5))
    low = min(mode.budgets, default=None)  # its KCD schedules, thin
    for r in results:
        if r['seed'] != 0 or not r['stages']:
            continue
        lowest = (low is not None and r['budget'] == low
                  and r['arm'] == mode.budget_arms[0]
                  and r.get('variant', '') in ('', 'stage_epochs=1'))
        if (r['budget'] is not None or r.get('variant')) and not lowest:
            continue
        n = r['stages'][0]['num_samples']
        # Fraction trained on in each epoch; a record after epoch e sets
        # the next epochs' set.
        kept = [1.0] * mode.epochs
        for s in r['stages']:
            kept[s['epoch']:] = [s['kept'] / n] * (mode.epochs - s['epoch'])
        style, width = styles[r['arm']]
        label = LABELS[r['arm']]
        if lowest:
            opts = r['hook']
            style, width = ('-.', 1.2) if r.get('variant') else ('-', 1.2)
            label = (f'KCD at {low:.0%}: T={opts["stage_epochs"]}, theta '
                     f'{opts["theta"]}, K={opts["num_steps"]}')
        ax.step(range(mode.epochs + 1), kept + kept[-1:], where='post',
                linestyle=style, linewidth=width, color=COLORS[r['arm']],
                label=label)
    ax.set_xlabel('epochs done')
    ax.set_ylabel('fraction of the training set trained on')
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = osp.join(img, f'bench_{mode_name}_kept_fraction.png')
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
