"""Kill a KCD run mid-stage and resume it: nothing lost, nothing changed."""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import torch

from kcd_mm.testing import make_image_folder, tiny_kcd_config, write_config
from helpers import repo_root, run_tool, stage_records, tests_on_path


def _final(work_dir, epochs):
    ckpt = torch.load(osp.join(work_dir, f'epoch_{epochs}.pth'),
                      weights_only=True)
    return ckpt['state_dict'], ckpt['kcd_state']


def test_killed_mid_stage_then_resumed_equals_uninterrupted(tmp_path):
    data = make_image_folder(str(tmp_path / 'data'), 60, 3, 16)
    cfg = tiny_kcd_config(data, max_epochs=6, stage_epochs=2, theta=0.5)
    cfg['randomness'] = dict(seed=7, deterministic=True)
    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    whole, broken = str(tmp_path / 'whole'), str(tmp_path / 'broken')
    run_tool(['tools/train.py', path, '--work-dir', whole])

    # Same run, SIGKILLed in epoch 4 (the middle of stage 2) ...
    marker = str(tmp_path / 'in_epoch_4')
    cfg['custom_imports']['imports'].append('kcd_probe')
    cfg['custom_hooks'].append(
        dict(type='mmrazor.PauseHook', epoch=4, batch_idx=2, marker=marker))
    paused = write_config(cfg, str(tmp_path / 'kcd_paused.py'))
    proc = subprocess.Popen(
        [sys.executable, 'tools/train.py', paused, '--work-dir', broken],
        cwd=repo_root(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        env=dict(os.environ, **tests_on_path(OMP_NUM_THREADS='1')))
    deadline = time.time() + 120
    while not osp.exists(marker):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not osp.exists(osp.join(broken, 'epoch_6.pth'))
    # ... then resumed from its last checkpoint, as a user would.
    out = run_tool(['tools/train.py', path, '--work-dir', broken,
                    '--resume']).stdout
    assert 'KCD resumed at stage 1' in out

    assert stage_records(broken, timings=False) == stage_records(
        whole, timings=False)
    weights_a, kcd_a = _final(whole, 6)
    weights_b, kcd_b = _final(broken, 6)
    assert torch.equal(kcd_a['kept'], kcd_b['kept'])
    for key in ('tail', 'lost', 'lam'):
        assert torch.equal(kcd_a['pairs'][key], kcd_b['pairs'][key])
    assert torch.equal(kcd_a['bank']['value_sum'], kcd_b['bank']['value_sum'])
    assert kcd_a['sample_iters'] == kcd_b['sample_iters']
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name
