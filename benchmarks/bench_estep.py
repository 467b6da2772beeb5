"""E-step time and memory against N: kcd_mm's bank next to the reference's
N x epochs history.

    python benchmarks/bench_estep.py [--sizes 50000 1281167 14197122]
        [--epochs 100] [--threads 1] [--ref-max-gib 4] [--out FILE]

For each N, in a fresh process on ``--threads`` cores (default 1, as the
target is stated):

- kcd_mm: ``KCDState.estep`` (score from the O(N) sums and visit counts,
  rank all N, condense);
- the reference's way: an N x ``--epochs`` float32 history of per-epoch
  values (NaN where a sample was not trained on), reduced to visit counts
  and mean values at the E-step, then scored and ranked the same way.
  Skipped (its bytes still reported) when the history would exceed
  ``--ref-max-gib``.

Reports the E-step's seconds (best of 3), the state it keeps between
E-steps, and the E-step's peak memory above what was resident before it
(Linux VmHWM after resetting it through /proc/self/clear_refs). Prints a
table and writes benchmarks/results/estep.json.
"""
import argparse
import json
import multiprocessing as mp
import os
import os.path as osp
import time

import torch

import kcd_mm  # noqa: F401
from kcd_mm.core.state import KCDOptions, KCDState

STAGE_EPOCHS = 16  # where the E-step runs; any boundary does


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_extra(fn) -> tuple:
    """(best seconds of 3, peak bytes above the RSS before the call)."""
    times, extra = [], 0
    for _ in range(3):
        rss = _status_kib('VmRSS')
        try:  # reset the high-water mark to the current RSS
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            reset = True
        except OSError:
            reset = False
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if reset:
            extra = max(extra, (_status_kib('VmHWM') - rss) * 1024)
    return min(times), extra if reset else None


def _kcd(n: int, out: mp.Queue) -> None:
    state = KCDState(n, KCDOptions(stage_epochs=STAGE_EPOCHS))
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(n)
    for _ in range(2):  # two epochs of records, merged
        state.bank.record(idx, torch.rand(n, generator=g))
        state.bank.merge()

    def step():
        state.kept, state.pairs = None, None
        state.estep(epoch=STAGE_EPOCHS)

    seconds, extra = _peak_extra(step)
    out.put(dict(seconds=seconds, peak_extra_bytes=extra,
                 state_bytes=state.bank.nbytes))


def _reference(n: int, epochs: int, out: mp.Queue) -> None:
    """The reference's way: reduce a full per-epoch history to visit
    counts and value sums, then the same E-step as kcd_mm's."""
    g = torch.Generator().manual_seed(0)
    history = torch.rand(n, epochs, generator=g)
    history[torch.rand(n, epochs, generator=g) < 0.2] = float('nan')
    state = KCDState(n, KCDOptions(stage_epochs=STAGE_EPOCHS))

    def step():
        state.bank.visits.copy_((~torch.isnan(history)).sum(1))
        state.bank.value_sum.copy_(torch.nan_to_num(history, nan=0.0).sum(1))
        state.kept, state.pairs = None, None
        state.estep(epoch=STAGE_EPOCHS)

    seconds, extra = _peak_extra(step)
    out.put(dict(seconds=seconds, peak_extra_bytes=extra,
                 state_bytes=history.numel() * 4))


def _in_child(target, *args) -> dict:
    """Run one measurement in a fresh process (its own peak memory)."""
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _mib(x) -> str:
    return '-' if x is None else f'{x / 2**20:.1f}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+',
                        default=[50000, 1281167, 14197122])
    parser.add_argument('--epochs', type=int, default=100,
                        help='epochs of history the reference would keep')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--ref-max-gib', type=float, default=4.0,
                        help='skip timing the reference above this history')
    parser.add_argument(
        '--out',
        default=osp.join(osp.dirname(osp.abspath(__file__)), 'results',
                         'estep.json'))
    args = parser.parse_args()
    # The measurements run in spawned children, which read this at start.
    os.environ['OMP_NUM_THREADS'] = str(args.threads)
    rows = []
    print(f'{"N":>10} | {"kcd_mm s":>8} {"state MiB":>9} {"peak+ MiB":>9} '
          f'| {"reference s":>11} {"history MiB":>11} {"peak+ MiB":>9}')
    for n in args.sizes:
        kcd = _in_child(_kcd, n)
        history_bytes = n * args.epochs * 4
        ref = None
        if history_bytes <= args.ref_max_gib * 2**30:
            ref = _in_child(_reference, n, args.epochs)
        row = dict(num_samples=n, estep_seconds=kcd['seconds'],
                   state_bytes=kcd['state_bytes'],
                   estep_peak_extra_bytes=kcd['peak_extra_bytes'],
                   reference_history_bytes=history_bytes,
                   reference_seconds=ref and ref['seconds'],
                   reference_peak_extra_bytes=ref and ref['peak_extra_bytes'])
        rows.append(row)
        ref_s = '-' if ref is None else f'{ref["seconds"]:.3f}'
        print(f'{n:>10} | {kcd["seconds"]:>8.3f} '
              f'{_mib(kcd["state_bytes"]):>9} '
              f'{_mib(kcd["peak_extra_bytes"]):>9} | {ref_s:>11} '
              f'{_mib(history_bytes):>11} '
              f'{_mib(ref and ref["peak_extra_bytes"]):>9}', flush=True)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(threads=args.threads, epochs=args.epochs,
                       stage_epochs=STAGE_EPOCHS,
                       ref_max_gib=args.ref_max_gib, rows=rows), f,
                  indent=2)


if __name__ == '__main__':
    main()
