"""Derived figures of a KCD run, for plots and inspection.

A little over 250 lines: every figure the two analysis tools draw or
print is computed here, so the tests check the numbers, not the PNGs.

``tools/analysis/plot_kcd.py`` and ``tools/analysis/inspect_kcd.py`` are
thin front ends to the functions here; tests check the numbers behind the
plots through them. What a run writes, and its readers, live in
:mod:`kcd_mm.records`; this module derives figures from those records and
snapshots, rebuilds the training dataset from the run's dumped config
(labels, class names, image paths; :func:`build_train_dataset`) and reads
KCD's progress from a checkpoint (:func:`read_progress`). Only those two
touch mmengine or torch; the rest is numpy on the records.
"""
import glob
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .labels import dataset_labels
from .records import StageSnapshot


# ------------------------------------------------------- derived figures
def stage_fractions(records: Sequence[Dict]) -> Dict[str, np.ndarray]:
    """Fractions of the training set per stage, summing to 1.

    ``kept_plain`` (kept, loaded as is), ``blended`` (kept tail samples
    that carry a dropped partner) and ``dropped``; ``kept`` =
    ``kept_plain + blended``.

    Returns:
        dict: ``stage``, ``epoch`` (int arrays) and the four fractions.
    """
    n = np.array([r['num_samples'] for r in records], dtype=np.float64)
    kept = np.array([r['kept'] for r in records], dtype=np.float64)
    blended = np.array([r['blended'] for r in records], dtype=np.float64)
    dropped = np.array([r['dropped'] for r in records], dtype=np.float64)
    return dict(
        stage=np.array([r['stage'] for r in records], dtype=np.int64),
        epoch=np.array([r['epoch'] for r in records], dtype=np.int64),
        kept=kept / n,
        kept_plain=(kept - blended) / n,
        blended=blended / n,
        dropped=dropped / n)


def sample_curve(
        records: Sequence[Dict],
        final: Optional[Dict] = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples trained on against plain KD, over epochs, from epoch 0.

    Args:
        records (list[dict]): The stage records.
        final (dict, optional): A later point (``epoch``,
            ``sample_iters``, ``full_kd_sample_iters``), e.g. from the
            last checkpoint (:func:`read_progress`); appended when it is
            past the last record.

    Returns:
        tuple: ``(epochs, kcd, kd)`` int arrays starting at ``(0, 0, 0)``.
    """
    points = [(0, 0, 0)]
    points += [(r['epoch'], r['sample_iters'], r['full_kd_sample_iters'])
               for r in records]
    if final is not None and final['epoch'] > points[-1][0]:
        points.append((final['epoch'], final['sample_iters'],
                       final['full_kd_sample_iters']))
    epochs, kcd, kd = (np.array(col, dtype=np.int64) for col in zip(*points))
    return epochs, kcd, kd


def value_split(snapshot: StageSnapshot) -> Tuple[np.ndarray, np.ndarray]:
    """Mean knowledge values of the kept and of the dropped samples."""
    mask = snapshot.kept_mask()
    return snapshot.mean_values[mask], snapshot.mean_values[~mask]


def per_class_kept(labels: np.ndarray,
                   kept: np.ndarray,
                   num_classes: Optional[int] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """How many samples of each class were kept, out of how many.

    Args:
        labels (np.ndarray): The class of each of the N samples.
        kept (np.ndarray): Indices of the kept samples.
        num_classes (int, optional): At least ``labels.max() + 1``.

    Returns:
        tuple: ``(kept_counts, totals)``, int arrays of length C; the kept
        fraction of class c is ``kept_counts[c] / totals[c]`` and
        ``kept_counts.sum() == len(kept)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    size = int(labels.max()) + 1 if labels.size else 0
    size = max(size, num_classes or 0)
    totals = np.bincount(labels, minlength=size)
    kept_counts = np.bincount(labels[np.asarray(kept, dtype=np.int64)],
                              minlength=size)
    return kept_counts, totals


def per_class_kept_fractions(labels: np.ndarray,
                             snapshots: Sequence[StageSnapshot],
                             num_classes: Optional[int] = None) -> np.ndarray:
    """Kept fraction of every class at every stage, shape (stages, C).

    A class with no sample gets NaN.
    """
    rows = []
    for snap in snapshots:
        kept_counts, totals = per_class_kept(labels, snap.kept, num_classes)
        with np.errstate(invalid='ignore', divide='ignore'):
            rows.append(kept_counts / totals.astype(np.float64))
    width = max((len(r) for r in rows), default=0)
    return np.array([np.pad(r, (0, width - len(r)), constant_values=np.nan)
                     for r in rows]).reshape(len(rows), width)


def present_class_fractions(labels: np.ndarray,
                            snapshots: Sequence[StageSnapshot],
                            dataset=None) -> Tuple[np.ndarray, List[str]]:
    """Kept fraction per stage of the classes that have samples, and their
    names: a folder holding 19 of ImageNet's 1000 listed classes gives 19
    columns, not 1000 mostly empty ones.

    Returns:
        tuple: ``(fractions, names)``, fractions of shape (stages, C_present)
        in class-index order.
    """
    fractions = per_class_kept_fractions(labels, snapshots)
    present = np.unique(np.asarray(labels, dtype=np.int64))
    names = class_names(dataset, fractions.shape[1])
    return fractions[:, present], [names[c] for c in present]


def dropped_since(snapshots: Sequence[StageSnapshot]) -> np.ndarray:
    """For each sample, the stage from which it has stayed dropped.

    Returns:
        np.ndarray: int array of length N; 0 for samples kept at the last
        stage, else the first stage of the run of stages (ending at the
        last) in which the sample was dropped.
    """
    if not snapshots:
        return np.zeros(0, dtype=np.int64)
    since = np.zeros(snapshots[-1].num_samples, dtype=np.int64)
    for snap in snapshots:
        kept = snap.kept_mask()
        since[kept] = 0
        since[(~kept) & (since == 0)] = snap.stage
    return since


# --------------------------------------------------- config and dataset
def find_config(work_dir: str) -> Optional[str]:
    """The config mmengine dumped into the work dir, or None.

    mmengine writes ``<work_dir>/<config name>.py``; when several ``.py``
    files are there the newest is taken. Failing that, the newest
    ``<timestamp>/vis_data/config.py``.
    """
    for pattern in ('*.py', osp.join('*', 'vis_data', 'config.py')):
        found = glob.glob(osp.join(work_dir, pattern))
        if found:
            return max(found, key=osp.getmtime)
    return None


def build_train_dataset(config: str):
    """Build the training dataset of a (KCD) config, unwrapped.

    ``KnowledgeSummaryDataset`` is unwrapped: the returned dataset is the
    real one, with the same indices KCD ranks. The config's
    ``custom_imports`` are imported and its ``default_scope`` applies.

    Args:
        config (str): Path of the config (e.g. from :func:`find_config`).

    Returns:
        The dataset (an mmengine ``BaseDataset``, fully initialised).
    """
    from mmengine.config import Config
    from mmengine.registry import DATASETS, DefaultScope

    import kcd_mm  # noqa: F401  (shims; KnowledgeSummaryDataset registered)

    cfg = Config.fromfile(config)
    ds_cfg = cfg.train_dataloader.dataset.to_dict()
    if str(ds_cfg.get('type', '')).split('.')[-1] == \
            'KnowledgeSummaryDataset':
        ds_cfg = ds_cfg['dataset']
        if not isinstance(ds_cfg, dict):
            raise TypeError('the KnowledgeSummaryDataset config holds a '
                            'built dataset, not a config')
    scope = cfg.get('default_scope', None) or 'mmengine'
    with DefaultScope.overwrite_default_scope(scope):
        dataset = DATASETS.build(ds_cfg)
    if hasattr(dataset, 'full_init'):
        dataset.full_init()
    return dataset


def train_labels(config: str, num_samples: int):
    """``(dataset, labels)`` of a run's training set, rebuilt from its
    config and checked to have the run's ``num_samples`` samples."""
    dataset = build_train_dataset(config)
    labels = dataset_labels(dataset)
    if len(labels) != num_samples:
        raise ValueError(f'the dataset has {len(labels)} samples, the run '
                         f'had {num_samples}')
    return dataset, labels


def class_names(dataset, num_classes: int) -> List[str]:
    """Class names from the dataset's metainfo, else ``'0'``, ``'1'``, ..."""
    names = (getattr(dataset, 'metainfo', None) or {}).get('classes')
    if names is not None and len(names) >= num_classes:
        return [str(n) for n in names]
    return [str(c) for c in range(num_classes)]


def sample_paths(dataset, indices: Sequence[int]) -> List[Optional[str]]:
    """``img_path`` of the given samples (None where a sample has none)."""
    return [
        dataset.get_data_info(int(i)).get('img_path') for i in indices
    ]


# ---------------------------------------------------------- checkpoints
def find_checkpoint(work_dir: str) -> Optional[str]:
    """The run's latest checkpoint: ``last_checkpoint``, else the highest
    ``epoch_K.pth``; None when there is none."""
    last = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(last):
        with open(last) as f:
            path = f.read().strip()
        for candidate in (path, osp.join(work_dir, osp.basename(path))):
            if candidate and osp.isfile(candidate):
                return candidate
    found = glob.glob(osp.join(work_dir, 'epoch_*.pth'))
    numbered = [(int(p.rsplit('_', 1)[1][:-4]), p) for p in found
                if p.rsplit('_', 1)[1][:-4].isdigit()]
    return max(numbered)[1] if numbered else None


def read_progress(checkpoint: str) -> Optional[Dict]:
    """KCD's progress at a checkpoint, or None if it carries no KCD state.

    Returns:
        dict: ``epoch`` (from the checkpoint's meta), ``stage``, ``kept``
        (count), ``sample_iters``, ``full_kd_sample_iters``.
    """
    from kcd_mm.compat.safe_loading import load
    try:
        ckpt = load(checkpoint, map_location='cpu', weights_only=True,
                    mmap=True)
    except RuntimeError:  # old (non-zip) format cannot be mmapped
        ckpt = load(checkpoint, map_location='cpu', weights_only=True)
    from kcd_mm.core.state import KCDState
    state = KCDState.saved_in(ckpt) if isinstance(ckpt, dict) else None
    if state is None:
        return None
    return dict(epoch=int(ckpt.get('meta', {}).get('epoch', 0)),
                **KCDState.progress_of(state))
