"""E-step cost and KCD state size against N, next to the reference's way.

    python benchmarks/bench_estep.py [--sizes 50000 1281167 14197122]
        [--epochs 100] [--threads 1] [--out FILE]

Times one full E-step (score, rank all N, condense) on ``--threads`` cores
(default 1, as the target is stated) and reports the bank's bytes next to
what the reference's N x epochs float32 history would hold. Prints a table
and writes benchmarks/results/estep.json.
"""
import argparse
import json
import os
import os.path as osp
import time

import torch

import kcd_mm  # noqa: F401
from kcd_mm.state import KCDOptions, KCDState


def bench(n: int, repeats: int = 3) -> dict:
    state = KCDState(n, KCDOptions(stage_epochs=16))
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(n)
    for _ in range(2):  # two epochs of records, then merged
        state.bank.record(idx, torch.rand(n, generator=g))
        state.bank.merge()
    times = []
    for _ in range(repeats):
        state.kept, state.pairs = None, None
        start = time.perf_counter()
        state.estep(epoch=16)
        times.append(time.perf_counter() - start)
    return dict(num_samples=n, estep_seconds=min(times),
                state_bytes=state.bank.nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+',
                        default=[50000, 1281167, 14197122])
    parser.add_argument('--epochs', type=int, default=100,
                        help='epochs of history the reference would keep')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument(
        '--out',
        default=osp.join(osp.dirname(osp.abspath(__file__)), 'results',
                         'estep.json'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f'{"N":>10} {"E-step s":>9} {"state MiB":>10} '
          f'{"reference history MiB":>22}')
    for n in args.sizes:
        row = bench(n)
        row['reference_history_bytes'] = n * args.epochs * 4
        rows.append(row)
        print(f'{n:>10} {row["estep_seconds"]:>9.3f} '
              f'{row["state_bytes"] / 2**20:>10.1f} '
              f'{row["reference_history_bytes"] / 2**20:>22.1f}')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(threads=args.threads, epochs=args.epochs, rows=rows),
                  f, indent=2)


if __name__ == '__main__':
    main()
