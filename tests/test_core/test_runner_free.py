"""kcd_mm.core runs without mmengine's Runner, hooks, datasets or dist.

A fresh interpreter blocks those modules (any import of them raises), and
loads ``kcd_mm.core`` as a subpackage of a bare ``kcd_mm`` (its
``__init__``, the registering glue, is not run), then runs a whole E-step
loop on the math alone: a bank, a selector, the summary, KCDState's
checkpoint round trip.
"""
import json
import os
import subprocess
import sys
import textwrap

from helpers import REPO_ROOT

CODE = textwrap.dedent('''
    import importlib.abc, json, sys, types

    BLOCKED = ('mmengine.runner', 'mmengine.hooks', 'mmengine.dataset',
               'mmengine.dist', 'mmengine.model', 'mmrazor', 'mmpretrain')

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith(BLOCKED):
                raise ImportError(f'blocked for this test: {name}')
            return None

    sys.meta_path.insert(0, Block())
    package = types.ModuleType('kcd_mm')
    package.__path__ = ['kcd_mm']  # the glue's __init__ never runs
    sys.modules['kcd_mm'] = package

    import torch
    from kcd_mm.core import KCDOptions, KCDState

    n = 40
    options = KCDOptions(stage_epochs=1, theta=0.5, num_steps=2,
                         summary='stage')
    state = KCDState(n, options, None, seed=3, max_epochs=3,
                     fingerprint=None, value_measure='entropy',
                     in_memory=False)
    kept = []
    for epoch in range(1, 3):
        idx = torch.arange(n)
        state.bank.record(idx, torch.rand(n, generator=torch.Generator()
                                          .manual_seed(epoch)))
        state.merge(None)
        state.count_epoch(state.kept_size)
        state.estep(epoch, None)
        kept.append(state.kept_size)
    again = KCDState(n, options, None, seed=3, max_epochs=3,
                     fingerprint=None, value_measure='entropy',
                     in_memory=False)
    again.load_state_dict(state.state_dict())
    print(json.dumps(dict(
        kept=kept, same=bool(torch.equal(again.kept, state.kept)),
        mmengine_runner='mmengine.runner' in sys.modules)))
''')


def test_the_core_runs_with_the_runner_blocked():
    proc = subprocess.run(
        [sys.executable, '-c', CODE], cwd=REPO_ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS='1', KCD_MM_MMRAZOR_HOOK='0'))
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == dict(kept=[30, 20], same=True, mmengine_runner=False)
