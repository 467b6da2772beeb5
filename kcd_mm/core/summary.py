"""The knowledge summary across stages: what each kept sample's image is.

``KCDHook(summary=...)`` chooses one of three modes:

* ``'persistent'`` (the reference): every blend is written into the tail
  sample's current image and stays there for the rest of training, also
  when the sample moves up, or is dropped and comes back; later blends
  start from images that are already blended, and a dropped partner may
  carry earlier blends. In-memory datasets (MNIST, CIFAR: ``img`` arrays
  in the data info) keep an exact uint8 copy of every blended image, as
  the reference does (:class:`ImageSummary`); file datasets keep each
  blended sample's image as a short linear combination of original images,
  composed at each E-step and loaded on the fly (:class:`TermSummary`).
* ``'stage'``: only the current stage's pairs, blended from raw images on
  load (:class:`StageSummary`); a blend is gone at the next E-step.
* ``False``: prune only; no summary object.

A summary turns the E-step's pairs into the extra part of each sampler
key (:meth:`payloads`), which the sampler hands, through the DataLoader's
index queue, to :class:`KnowledgeSummaryDataset` in every worker. Each
rank computes the same summary from the same pairs and the same images.
numpy and torch only.
"""
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .condensation import Condensation
from .sample_key import Terms

#: ``KCDHook(summary=...)`` values that blend.
BLENDING_MODES = ('persistent', 'stage')


def reference_lams(num_pairs: int,
                   lam_range: Tuple[float, float]) -> np.ndarray:
    """lam_k of the k-th of L pairs in float32, by the reference's own
    sequence of float32 operations (``(hi - lo) * ((L - k) / L) + lo``),
    so that a truncated uint8 blend lands on exactly its pixels. L is the
    number of pairs, as in the reference (the stage summary's L counts the
    dropped samples; they differ only when fewer are kept than dropped)."""
    lo, hi = lam_range
    k = torch.arange(num_pairs)
    lam = (hi - lo) * ((num_pairs * torch.ones(num_pairs) - k) /
                       max(num_pairs, 1)) + lo
    return lam.numpy()


def blend_uint8(x: np.ndarray, y: np.ndarray, lam: np.float32) -> np.ndarray:
    """``uint8(lam * x + (1 - lam) * y)`` in float32, truncated toward
    zero, as the reference writes a blend into its uint8 image array."""
    lam = np.float32(lam)
    mixed = x.astype(np.float32) * lam + y.astype(np.float32) * (
        np.float32(1.0) - lam)
    return mixed.astype(np.uint8)


def compose_terms(own: Terms, other: Terms, lam: float,
                  max_terms: int) -> Tuple[Terms, float]:
    """``lam * own + (1 - lam) * other`` as terms, bounded.

    Terms naming the same original image are merged; beyond ``max_terms``
    the smallest weights are dropped (ties: higher index first) and the
    rest renormalised to sum 1. Returns the terms, largest weight first,
    and the weight dropped.
    """
    weights: Dict[int, float] = {}
    for idx, w in own:
        weights[idx] = weights.get(idx, 0.0) + lam * w
    for idx, w in other:
        weights[idx] = weights.get(idx, 0.0) + (1.0 - lam) * w
    ranked = sorted(weights.items(), key=lambda t: (-t[1], t[0]))
    kept = ranked[:max_terms]
    total = sum(w for _, w in kept)
    dropped = max(1.0 - total, 0.0)
    return tuple((i, w / total) for i, w in kept), dropped


class Summary:
    """Base class: the summary of one run (see the module docstring)."""

    #: ``KCDHook(summary=...)`` value
    mode = ''

    def update(self, pairs: Condensation,
               images: Optional[Callable] = None) -> Dict:
        """Take one E-step's pairs; returns the stage record's fields.

        ``images(indices)`` gives the current original images (uint8
        arrays) of an in-memory dataset; only :class:`ImageSummary`
        needs it.
        """
        raise NotImplementedError

    def payloads(self, kept: Optional[torch.Tensor]) -> Dict[int, tuple]:
        """Sampler key extras of the kept samples: ``{index: extra}``."""
        raise NotImplementedError

    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state: Dict) -> None:
        pass


class StageSummary(Summary):
    """This stage's pairs only: each tail sample is yielded as
    ``(tail, partner, lam)`` and blended from the raw images on load."""

    mode = 'stage'

    def __init__(self) -> None:
        self.pairs: Optional[Condensation] = None

    def update(self, pairs: Condensation,
               images: Optional[Callable] = None) -> Dict:
        self.pairs = pairs
        return dict(carrying_blend=pairs.num_blended)

    def payloads(self, kept: Optional[torch.Tensor]) -> Dict[int, tuple]:
        if self.pairs is None or not self.pairs.num_blended:
            return {}
        p = self.pairs
        return dict(zip(p.tail.tolist(), zip(p.lost.tolist(),
                                             p.lam.tolist())))


def _kept_members(store: Dict[int, object],
                  kept: Optional[torch.Tensor]) -> Dict[int, object]:
    if kept is None:
        return dict(store)
    return {i: store[i] for i in kept.tolist() if i in store}


class ImageSummary(Summary):
    """The reference's persistent summary of an in-memory dataset, exact.

    Holds a uint8 copy of the current image of every sample ever blended
    (O(blended samples)); each E-step blends ``tail <- uint8(lam * tail +
    (1 - lam) * lost)`` on current images, all pairs from the images before
    the step, lam by :func:`reference_lams`. A kept sample with a copy is
    yielded as ``(index, image)``. Part of KCD's checkpointed state.

    With ``track_terms`` it also composes, unbounded, which original
    images each copy is made of and in what weights (as
    :class:`TermSummary` does, without dropping any), for
    ``blend_label='mix'``; a kept sample is then ``(index, image, terms)``.

    Args:
        lam_range (tuple): (lam_min, lam_max) of the blend.
        track_terms (bool): also keep each copy's composition.
    """

    mode = 'persistent'

    def __init__(self, lam_range: Tuple[float, float],
                 track_terms: bool = False) -> None:
        self.lam_range = tuple(lam_range)
        self.images: Dict[int, np.ndarray] = {}
        self.terms: Optional[Dict[int, Terms]] = {} if track_terms else None

    def update(self, pairs: Condensation,
               images: Optional[Callable] = None) -> Dict:
        tail, lost = pairs.tail.tolist(), pairs.lost.tolist()
        if tail:
            if images is None:
                raise ValueError('ImageSummary.update needs the images')
            lams = reference_lams(len(tail), self.lam_range)
            missing = [i for i in set(tail + lost) if i not in self.images]
            current = dict(self.images)
            if missing:
                current.update(zip(missing, images(missing)))
            before = None if self.terms is None else dict(self.terms)
            for k, (t, s) in enumerate(zip(tail, lost)):
                x, y = current[t], current[s]
                if y.shape != x.shape:
                    raise ValueError(
                        f'KCD persistent summary: sample {s} has shape '
                        f'{y.shape}, sample {t} {x.shape}; the in-memory '
                        "summary needs equal shapes. Use summary='stage'.")
                self.images[t] = blend_uint8(x, y, lams[k])
                if before is not None:
                    own = before.get(t, ((t, 1.0), ))
                    other = before.get(s, ((s, 1.0), ))
                    self.terms[t] = compose_terms(
                        own, other, float(lams[k]), len(own) + len(other))[0]
        return dict(carrying_blend=len(_kept_members(self.images,
                                                     pairs.kept)),
                    ever_blended=len(self.images))

    def payloads(self, kept: Optional[torch.Tensor]) -> Dict[int, tuple]:
        members = _kept_members(self.images, kept)
        if self.terms is None:
            return {i: (img, ) for i, img in members.items()}
        return {i: (img, self.terms[i]) for i, img in members.items()}

    def state_dict(self) -> Dict:
        idx = sorted(self.images)
        imgs = [torch.from_numpy(np.ascontiguousarray(self.images[i]))
                for i in idx]
        same = len({tuple(t.shape) for t in imgs}) <= 1
        state = dict(
            mode=self.mode, kind='images',
            indices=torch.tensor(idx, dtype=torch.int64),
            images=torch.stack(imgs) if imgs and same else imgs)
        if self.terms is not None:
            state.update(_pack_terms(self.terms, idx))
        return state

    def load_state_dict(self, state: Dict) -> None:
        _check_kind(state, 'images')
        indices = state['indices'].tolist()
        self.images = {
            int(i): img.numpy().copy()
            for i, img in zip(indices, state['images'])
        }
        if self.terms is None:
            return
        if 'term_index' not in state:
            raise ValueError(
                "KCD blend_label='mix': the checkpoint's persistent summary "
                'does not say which images its blends are made of (it was '
                "written with blend_label='own'), so their labels cannot be "
                "mixed: resume with blend_label='own', or start again.")
        self.terms = _unpack_terms(state, indices)


class TermSummary(Summary):
    """The persistent summary of a file dataset, as linear combinations.

    Each blended sample's current image is ``sum_j w_j * original_j`` over
    at most ``max_terms`` original images; an E-step composes ``tail <-
    lam * tail + (1 - lam) * lost`` on the terms (both current) and drops
    the smallest weights beyond the bound (renormalised). The dataset loads
    every term's image, combines them in float32 and rounds once, before
    augmentation, so an image differs from the in-memory (per-step
    truncated) one by at most about one grey level per blend plus what the
    bound drops. O(blended samples * max_terms) in memory and checkpoints.

    Args:
        lam_range (tuple): (lam_min, lam_max) of the blend.
        max_terms (int): images a sample may combine (its own included).
    """

    mode = 'persistent'

    def __init__(self, lam_range: Tuple[float, float], max_terms: int) -> None:
        self.lam_range = tuple(lam_range)
        self.max_terms = int(max_terms)
        self.terms: Dict[int, Terms] = {}

    def update(self, pairs: Condensation,
               images: Optional[Callable] = None) -> Dict:
        tail, lost = pairs.tail.tolist(), pairs.lost.tolist()
        lams = reference_lams(len(tail), self.lam_range)
        before = dict(self.terms)
        dropped = []
        for k, (t, s) in enumerate(zip(tail, lost)):
            terms, gone = compose_terms(
                before.get(t, ((t, 1.0), )), before.get(s, ((s, 1.0), )),
                float(lams[k]), self.max_terms)
            self.terms[t] = terms
            dropped.append(gone)
        members = _kept_members(self.terms, pairs.kept)
        kept = pairs.kept.numel()
        loads = sum(len(v) for v in members.values()) - len(members)
        return dict(carrying_blend=len(members),
                    ever_blended=len(self.terms),
                    loads_per_sample=round(1.0 + loads / max(kept, 1), 4),
                    max_weight_dropped=round(max(dropped, default=0.0), 6))

    def payloads(self, kept: Optional[torch.Tensor]) -> Dict[int, tuple]:
        return {i: (terms, ) for i, terms in
                _kept_members(self.terms, kept).items()}

    def state_dict(self) -> Dict:
        idx = sorted(self.terms)
        return dict(mode=self.mode, kind='terms',
                    indices=torch.tensor(idx, dtype=torch.int64),
                    **_pack_terms(self.terms, idx))

    def load_state_dict(self, state: Dict) -> None:
        _check_kind(state, 'terms')
        self.terms = {
            i: terms[:self.max_terms]
            for i, terms in _unpack_terms(state,
                                          state['indices'].tolist()).items()
        }


def _pack_terms(terms: Dict[int, Terms], indices) -> Dict:
    """``term_index``/``term_weight``: one row per sample of ``indices``,
    padded with index -1 (a checkpoint holds tensors, not tuples)."""
    width = max((len(terms[i]) for i in indices), default=1)
    index = torch.full((len(indices), width), -1, dtype=torch.int64)
    weight = torch.zeros((len(indices), width), dtype=torch.float64)
    for row, i in enumerate(indices):
        for col, (j, w) in enumerate(terms[i]):
            index[row, col], weight[row, col] = j, w
    return dict(term_index=index, term_weight=weight)


def _unpack_terms(state: Dict, indices) -> Dict[int, Terms]:
    return {
        int(i): tuple((j, w) for j, w in zip(js, ws) if j >= 0)
        for i, js, ws in zip(indices, state['term_index'].tolist(),
                             state['term_weight'].tolist())
    }


def _check_kind(state: Dict, kind: str) -> None:
    if state.get('kind') != kind:
        raise ValueError(
            f"KCD: the checkpoint's persistent summary holds "
            f"{state.get('kind')!r}, this run's dataset needs {kind!r} (an "
            'in-memory dataset keeps images, a file dataset terms): resume '
            'with the same training dataset.')


def build_summary(mode, in_memory: bool, lam_range: Tuple[float, float],
                  max_terms: int,
                  mixed_labels: bool = False) -> Optional[Summary]:
    """The summary ``KCDHook(summary=mode)`` asks for (None: prune only);
    ``mixed_labels``: ``blend_label='mix'``, whose labels need an in-memory
    image's composition."""
    if mode == 'stage':
        return StageSummary()
    if mode == 'persistent':
        if in_memory:
            return ImageSummary(lam_range, track_terms=mixed_labels)
        return TermSummary(lam_range, max_terms)
    return None
