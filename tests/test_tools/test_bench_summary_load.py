"""benchmarks/bench_summary_load.py end to end on 20 small JPEGs, in the
main process (no workers): the keys of every arm load, and the JSON holds
each arm's figures. Timings are not checked."""
import importlib.util
import json
import os.path as osp

import pytest

from helpers import repo_root


def _bench():
    path = osp.join(repo_root(), 'benchmarks', 'bench_summary_load.py')
    spec = importlib.util.spec_from_file_location('bench_summary_load', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_every_arm(tmp_path):
    out = str(tmp_path / 'summary_load.json')
    _bench().main(['--quick', '--files', '20', '--scale', '0.2',
                   '--workers', '0', '--batch', '8', '--sim-samples', '2000',
                   '--out', out])
    with open(out) as f:
        result = json.load(f)
    arms = {row['arm']: row for row in result['arms']}
    assert list(arms) == ['plain', 'stage', 'persistent@0.05',
                          'persistent@0.1', 'persistent@0.23']
    assert arms['plain']['cpu_ratio']['pooled'] == 1.0
    assert arms['plain']['extra_loads'] == 0.0
    # 20 files: one stage pair, one to five term keys (up to 3 extra loads).
    assert arms['stage']['extra_loads'] == pytest.approx(1 / 20)
    assert 1 / 20 <= arms['persistent@0.23']['extra_loads'] <= 15 / 20
    assert all(row['images_per_s'] > 0 for row in arms.values())
    assert [s['stage'] for s in result['simulated_stages']] == [1, 2, 3, 4, 5]
    assert result['pipeline'][0]['type'] == 'LoadImageFromFile'
