"""Read what a KCD run leaves in its work dir, for plots and inspection.

``tools/analysis/plot_kcd.py`` and ``tools/analysis/inspect_kcd.py`` are
thin front ends to the functions here; tests check the numbers behind the
plots through them. A KCD work dir holds

* ``kcd_stages.jsonl``: one record per E-step (see :func:`read_records`);
* ``kcd_stages/stage_NNN.npz``: who was kept, blended and dropped at each
  stage, and every sample's score and mean knowledge value (see
  :func:`read_snapshots`);
* checkpoints carrying ``kcd_state`` (see :func:`read_progress`);
* mmengine's dump of the config, from which the training dataset (labels,
  class names, image paths) is rebuilt (see :func:`build_train_dataset`).

Only :func:`build_train_dataset` and :func:`read_progress` touch
mmengine or torch; the rest is numpy on the records.
"""
import glob
import json
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# What KCDHook writes (it imports these names; this module only reads).
RECORD_FILE = 'kcd_stages.jsonl'
SNAPSHOT_DIR = 'kcd_stages'
CKPT_KEY = 'kcd_state'  # KCD's entry in a Runner checkpoint


def snapshot_path(work_dir: str, stage: int) -> str:
    """``<work_dir>/kcd_stages/stage_NNN.npz`` of one stage."""
    return osp.join(work_dir, SNAPSHOT_DIR, f'stage_{stage:03d}.npz')


# ------------------------------------------------------------- records
def read_records(work_dir: str, record_file: str = RECORD_FILE) -> List[Dict]:
    """The stage records of a run, in stage order.

    Args:
        work_dir (str): The run's work dir.
        record_file (str): Record name in the work dir (KCDHook's
            ``record_file``). Defaults to ``kcd_stages.jsonl``.

    Returns:
        list[dict]: One dict per E-step with ``stage``, ``epoch``,
        ``num_samples``, ``kept``, ``blended``, ``dropped``,
        ``sample_iters``, ``full_kd_sample_iters``, ``estep_seconds``,
        ``value_mean``, ``value_std``, ...

    Raises:
        FileNotFoundError: no record (not a KCD work dir, or no E-step ran).
    """
    path = osp.join(work_dir, record_file)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} does not exist: {work_dir} is not the work dir of a KCD '
            'run, or the run has not reached its first E-step yet (after '
            'stage_epochs epochs).')
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return sorted(records, key=lambda r: r['stage'])


@dataclass
class StageSnapshot:
    """One stage's condensation, as ``KCDHook`` saved it.

    Attributes:
        stage (int): 1, 2, ...
        kept (np.ndarray): int indices of the kept samples.
        tail (np.ndarray): kept samples blended with a dropped partner.
        lost (np.ndarray): their partners, dropped at this stage
            (``tail[k]`` is blended with ``lost[k]``).
        lam (np.ndarray): blend weight of ``tail[k]``.
        scores (np.ndarray): every sample's E-step score (length N).
        mean_values (np.ndarray): every sample's mean knowledge value over
            the run so far (length N).
    """
    stage: int
    kept: np.ndarray
    tail: np.ndarray
    lost: np.ndarray
    lam: np.ndarray
    scores: np.ndarray
    mean_values: np.ndarray

    @property
    def num_samples(self) -> int:
        """N, the size of the training set."""
        return int(self.scores.shape[0])

    def kept_mask(self) -> np.ndarray:
        """Boolean mask over the N samples: True where kept."""
        mask = np.zeros(self.num_samples, dtype=bool)
        mask[self.kept] = True
        return mask

    def dropped(self) -> np.ndarray:
        """Indices of the samples not kept at this stage, ascending."""
        return np.flatnonzero(~self.kept_mask())


def read_snapshots(work_dir: str) -> List[StageSnapshot]:
    """Every ``kcd_stages/stage_NNN.npz`` of a run, in stage order.

    Args:
        work_dir (str): The run's work dir.

    Returns:
        list[StageSnapshot]: Empty when the run wrote none.
    """
    paths = glob.glob(osp.join(work_dir, SNAPSHOT_DIR, 'stage_[0-9]*.npz'))
    snapshots = []
    for path in paths:
        stage = int(osp.basename(path)[len('stage_'):-len('.npz')])
        with np.load(path) as data:
            snapshots.append(
                StageSnapshot(
                    stage=stage,
                    **{k: data[k]
                       for k in ('kept', 'tail', 'lost', 'lam', 'scores',
                                 'mean_values')}))
    return sorted(snapshots, key=lambda s: s.stage)


def check_consistency(records: Sequence[Dict],
                      snapshots: Sequence[StageSnapshot]) -> List[str]:
    """Disagreements between the record and the snapshots, as sentences.

    Returns:
        list[str]: Empty when every snapshot matches its stage's record
        (same N, kept and blended counts) and every record has a snapshot.
    """
    problems = []
    by_stage = {r['stage']: r for r in records}
    have = {s.stage for s in snapshots}
    missing = sorted(set(by_stage) - have)
    if missing:
        problems.append(f'no snapshot for stage(s) {missing}')
    for snap in snapshots:
        rec = by_stage.get(snap.stage)
        if rec is None:
            problems.append(f'snapshot of stage {snap.stage} has no record')
            continue
        got = (snap.num_samples, len(snap.kept), len(snap.tail))
        want = (rec['num_samples'], rec['kept'], rec['blended'])
        if got != want:
            problems.append(
                f'stage {snap.stage}: snapshot has (N, kept, blended) = '
                f'{got}, the record {want}')
    return problems


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
    import kcd_mm  # noqa: F401  (shims; KnowledgeSummaryDataset registered)
    from mmengine.config import Config
    from mmengine.registry import DATASETS, DefaultScope

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


def gt_labels(dataset) -> Optional[np.ndarray]:
    """The dataset's own single-label ``get_gt_labels`` (mmpretrain) as an
    int array, or None when it has none or it is multi-label."""
    try:
        labels = np.asarray(dataset.get_gt_labels())
    except Exception:  # no such method, or ragged multi-label lists
        return None
    if labels.ndim != 1 or labels.dtype == object or len(labels) != len(
            dataset):
        return None
    return labels.astype(np.int64)


def dataset_labels(dataset) -> np.ndarray:
    """The class of every sample, as an int array of length ``len(dataset)``.

    Uses :func:`gt_labels` when it gives them, else ``get_cat_ids`` or
    ``gt_label`` of each data info; only the first label of a multi-label
    sample is used.
    """
    labels = gt_labels(dataset)
    if labels is not None:
        return labels
    out = np.empty(len(dataset), dtype=np.int64)
    for i in range(len(dataset)):
        if hasattr(dataset, 'get_cat_ids'):
            label = dataset.get_cat_ids(i)
        else:
            label = dataset.get_data_info(i)['gt_label']
        out[i] = int(np.asarray(label).reshape(-1)[0])
    return out


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
    import kcd_mm.compat  # noqa: F401  (safe-load globals)
    import torch
    try:
        ckpt = torch.load(checkpoint, map_location='cpu', weights_only=True,
                          mmap=True)
    except RuntimeError:  # old (non-zip) format cannot be mmapped
        ckpt = torch.load(checkpoint, map_location='cpu', weights_only=True)
    state = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
    if state is None:
        return None
    kept = state.get('kept')
    return dict(
        epoch=int(ckpt.get('meta', {}).get('epoch', 0)),
        stage=int(state['stage']),
        kept=int(state['num_samples']) if kept is None else int(kept.numel()),
        sample_iters=int(state['sample_iters']),
        full_kd_sample_iters=int(state['full_kd_sample_iters']))
