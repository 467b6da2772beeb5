"""What a KCD run writes into its work dir, and how to read it back.

Why one module over 250 lines: the names, the record schema, the writer
and the readers change together (issue 9 asked for one home).

* ``kcd_stages.jsonl``: one :class:`StageRecord` per E-step (rank 0);
* ``kcd_stages/stage_NNN.npz``: who was kept, blended and dropped at each
  stage, with every sample's score and mean knowledge value
  (:class:`StageSnapshot`);
* checkpoints carry KCD's state under :data:`CKPT_KEY`.

:class:`RecordWriter` is the one writer (used by KCDHook); the readers
serve ``tools/analysis``, the benchmarks and the tests. numpy and the
standard library only: the writer is handed the visualizer it logs to.
"""
import glob
import json
import os
import os.path as osp
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Sequence

import numpy as np

from .fileio import write_atomically

RECORD_FILE = 'kcd_stages.jsonl'
SNAPSHOT_DIR = 'kcd_stages'
CKPT_KEY = 'kcd_state'  # KCD's entry in a Runner checkpoint
# The arrays of a stage snapshot, as StageSnapshot names them.
SNAPSHOT_ARRAYS = ('kept', 'tail', 'lost', 'lam', 'scores', 'mean_values')


def snapshot_path(work_dir: str, stage: int) -> str:
    """``<work_dir>/kcd_stages/stage_NNN.npz`` of one stage."""
    return osp.join(work_dir, SNAPSHOT_DIR, f'stage_{stage:03d}.npz')


@dataclass
class StageRecord:
    """One E-step, as written to ``kcd_stages.jsonl`` (one JSON object).

    Attributes:
        stage: 1, 2, ...
        epoch: epochs completed when it ran.
        num_samples: N.
        kept / blended / dropped: samples kept for the next stage, kept
            tail samples blended with a dropped partner, samples dropped.
        sample_iters: samples trained on so far (resumed history included).
        full_kd_sample_iters: what plain KD would have used by then.
        estep_seconds: time the E-step took.
        value_mean / value_std / values_recorded / values_skipped: the
            knowledge values recorded during the stage (skipped: NaN/inf).
        extra: the selector's own fields (InfoBatch: ``target``,
            ``prune_ratio``, ``loss_weight``, ``below_mean``, ``budget``,
            ``budget_capped``).
        peak_rss_mib: peak resident memory of rank 0 so far; flat across
            stages means no growing per-stage history.
        degenerate: why the stage's values could not rank the samples
            (the student classifier did not change, near-constant values),
            or None; such an E-step in effect prunes at random.
        summary: the knowledge summary after the E-step (None: prune
            only): ``mode``; ``carrying_blend``, kept samples whose image
            carries a blend; with ``'persistent'``, ``ever_blended``
            (samples with a blended image, kept or not) and, on file
            datasets, ``loads_per_sample`` (image loads per kept sample)
            and ``max_weight_dropped`` (the term bound's largest cut).
    """
    stage: int
    epoch: int
    num_samples: int
    kept: int
    blended: int
    dropped: int
    sample_iters: int
    full_kd_sample_iters: int
    estep_seconds: float
    value_mean: float
    value_std: float
    values_recorded: int
    values_skipped: int
    extra: Dict = field(default_factory=dict)
    peak_rss_mib: Optional[float] = None
    degenerate: Optional[str] = None
    summary: Optional[Dict] = None

    @classmethod
    def from_dict(cls, data: Dict) -> 'StageRecord':
        names = {f.name for f in fields(cls)} - {'extra'}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    def as_dict(self) -> Dict:
        """The JSON object: the fields, the selector's, then peak RSS."""
        out = asdict(self)
        extra, rss = out.pop('extra'), out.pop('peak_rss_mib')
        degenerate, summary = out.pop('degenerate'), out.pop('summary')
        out.update(extra)
        if rss is not None:
            out['peak_rss_mib'] = rss
        out['degenerate'] = degenerate
        out['summary'] = summary
        return out

    @property
    def kd_ratio(self) -> float:
        return self.sample_iters / max(self.full_kd_sample_iters, 1)

    def log_line(self) -> str:
        n = self.num_samples
        line = (f'KCD stage {self.stage} after epoch {self.epoch}: kept '
                f'{self.kept}/{n} ({100 * self.kept / n:.1f}%), blended '
                f'{self.blended}, dropped {self.dropped}; samples trained '
                f'{self.sample_iters} = {self.kd_ratio:.3f} of KD; value '
                f'mean {self.value_mean:.4f} std {self.value_std:.4f}; '
                f'E-step {self.estep_seconds * 1e3:.1f} ms')
        summary = self.summary or {}
        if summary.get('mode') == 'persistent':
            line += (f"; persistent summary: {summary['carrying_blend']} "
                     'kept samples carry a blend')
            if 'loads_per_sample' in summary:
                line += (f", {summary['loads_per_sample']:.3f} image loads "
                         'per sample')
        if self.peak_rss_mib is not None:
            line += f'; peak RSS {self.peak_rss_mib:.0f} MiB'
        return line

    def scalars(self) -> Dict[str, float]:
        """``kcd/<field>`` scalars for mmengine's visualizer."""
        out = {
            f'kcd/{k}': int(v) if isinstance(v, bool) else v
            for k, v in self.as_dict().items()
            if k not in ('stage', 'epoch', 'degenerate', 'summary')
        }
        for k, v in (self.summary or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f'kcd/summary_{k}'] = v
        out['kcd/degenerate'] = int(self.degenerate is not None)
        out['kcd/kept_fraction'] = self.kept / self.num_samples
        return out


def check_record_file(name: str) -> str:
    """``record_file`` must be a plain file name: it lives in the work dir,
    next to the snapshots, and the tools find it there."""
    if not isinstance(name, str) or not name or name != osp.basename(
            name) or name in ('.', '..') or name == SNAPSHOT_DIR:
        raise ValueError(
            f'KCDHook record_file={name!r} must be a plain file name such '
            f"as {RECORD_FILE!r}: the record is written into the run's work "
            'dir (no folders, no absolute path; to keep records elsewhere, '
            'set work_dir).')
    return name


class RecordWriter:
    """Writes the stage record and snapshots of one run (rank 0 only).

    Args:
        work_dir (str): the run's work dir.
        record_file (str): the record's name in it.
    """

    def __init__(self, work_dir: str, record_file: str = RECORD_FILE):
        self.work_dir = work_dir
        self.path = osp.join(work_dir, record_file)

    def start(self) -> List[str]:
        """A fresh run starts a fresh record; an old record (and its
        snapshots) is kept aside with a timestamp. Returns messages."""
        stamp = time.strftime('%Y%m%d_%H%M%S')
        moved = []
        for old in (self.path, osp.join(self.work_dir, SNAPSHOT_DIR)):
            if osp.exists(old):
                root, ext = osp.splitext(old)
                os.replace(old, f'{root}.{stamp}{ext}')
                moved.append(f"KCD: kept the previous run's {old} as "
                             f'{root}.{stamp}{ext}')
        return moved

    def append(self, record: StageRecord) -> None:
        with open(self.path, 'a') as f:
            f.write(json.dumps(record.as_dict()) + '\n')
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: Sequence[StageRecord]) -> None:
        """Resumed: the record and snapshots hold exactly these stages,
        whatever a crashed run wrote after them."""
        write_atomically(self.path, lambda f: f.writelines(
            json.dumps(r.as_dict()) + '\n' for r in records), mode='w')
        stage = len(records) + 1
        while osp.exists(snapshot_path(self.work_dir, stage)):
            os.remove(snapshot_path(self.work_dir, stage))
            stage += 1

    def write_snapshot(self, stage: int, kept, tail, lost, lam, scores,
                       mean_values) -> None:
        """Who was kept, blended and dropped at ``stage``, and why (for
        tools/analysis); ~10 bytes a sample."""
        arrays = dict(kept=np.asarray(kept).astype(np.int32),
                      tail=np.asarray(tail).astype(np.int32),
                      lost=np.asarray(lost).astype(np.int32),
                      lam=np.asarray(lam), scores=np.asarray(scores),
                      mean_values=np.asarray(mean_values))
        # A kill mid-write leaves no truncated snapshot.
        write_atomically(snapshot_path(self.work_dir, stage),
                         lambda f: np.savez(f, **arrays))

    @staticmethod
    def add_value_histograms(visualizer, values, kept, step: int) -> None:
        """Mean knowledge values of the kept and of the dropped samples,
        for TensorBoard: mmengine's visualizer has no histogram call, so
        the TensorBoard backend's writer is used when there is one."""
        backend = visualizer.get_backend('TensorboardVisBackend')
        if backend is None:
            return
        mask = np.zeros(len(values), dtype=bool)
        mask[np.asarray(kept)] = True
        for tag, part in (('kcd/value_kept', values[mask]),
                          ('kcd/value_dropped', values[~mask])):
            if len(part):
                backend.experiment.add_histogram(tag, part, global_step=step)


# ------------------------------------------------------------- readers
def read_records(work_dir: str, record_file: str = RECORD_FILE) -> List[Dict]:
    """The stage records of a run, in stage order.

    Args:
        work_dir (str): The run's work dir.
        record_file (str): Record name in the work dir (KCDHook's
            ``record_file``). Defaults to ``kcd_stages.jsonl``.

    Returns:
        list[dict]: One dict per E-step, the fields of :class:`StageRecord`.

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
        list[StageSnapshot]: Empty when the run wrote none. A snapshot that
        cannot be read (truncated, empty, not an ``.npz``, an array
        missing) is left out with a warning naming it; a ``.tmp`` left by
        a killed write is not a snapshot and is ignored.
    """
    paths = glob.glob(osp.join(work_dir, SNAPSHOT_DIR, 'stage_[0-9]*.npz'))
    snapshots = []
    for path in paths:
        stage = int(osp.basename(path)[len('stage_'):-len('.npz')])
        try:  # the file is ours to close, even when numpy fails on it
            with open(path, 'rb') as f:
                data = np.load(f)
                if not isinstance(data, np.lib.npyio.NpzFile):
                    raise ValueError('not an .npz archive')
                with data:
                    arrays = {k: data[k] for k in SNAPSHOT_ARRAYS}
        except (zipfile.BadZipFile, EOFError, ValueError, KeyError,
                OSError) as e:
            warnings.warn(
                f'kcd_mm: skipped the damaged snapshot {path} '
                f'({type(e).__name__}: {e})', stacklevel=2)
            continue
        snapshots.append(StageSnapshot(stage=stage, **arrays))
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
