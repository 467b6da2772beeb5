"""mmengine's distributed launchers and DDP wrapping without CUDA
(kcd_mm.compat.cpu_launch), and bfloat16 autocast on the CPU
(kcd_mm.compat.cpu_amp)."""
import datetime
import os
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config

from helpers import REPO_ROOT, free_port

sys.path.append(osp.join(REPO_ROOT, 'tools'))
import tool_utils  # noqa: E402

DIST_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')
needs_no_accelerator = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the shim leaves mmengine's CUDA launch alone")


def _init_dist(monkeypatch, launcher, env, path, **dist_cfg):
    """``mmengine.dist.init_dist(launcher, **dist_cfg)`` (the Runner's call)
    under the launcher variables ``env`` and ``PATH=path``, with
    ``torch.distributed.init_process_group`` captured instead of run.

    Returns:
        tuple: The backend, the other keyword arguments, and the five
        torch.distributed variables as the call saw them.
    """
    from mmengine.dist import utils as dist_utils
    launcher_vars = [k for k in os.environ if k.startswith(('SLURM_',
                                                           'OMPI_'))]
    for key in DIST_VARS + tuple(launcher_vars):
        # setenv first, so that the teardown removes what mmengine sets.
        monkeypatch.setenv(key, 'unset')
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv('PATH', path)
    calls = []

    def init_process_group(backend=None, **kwargs):
        calls.append(
            (backend, kwargs, {k: os.environ.get(k) for k in DIST_VARS}))

    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        init_process_group)
    # init_dist would otherwise switch this process to 'spawn'.
    monkeypatch.setattr(dist_utils.mp, 'set_start_method',
                        lambda *args, **kwargs: None)
    set_device = torch.cuda.set_device
    dist_utils.init_dist(launcher, **dist_cfg)
    assert torch.cuda.set_device is set_device  # restored
    assert len(calls) == 1
    return calls[0]


@needs_no_accelerator
def test_slurm_env_through_mmengine(monkeypatch, tmp_path):
    """mmengine's slurm launcher, made to run without CUDA by kcd_mm.compat:
    gloo instead of nccl, no CUDA device call, mmengine's derivation of the
    torch.distributed variables from slurm's kept."""
    system_path = os.environ['PATH']
    # Without the shim mmengine would call this, which cannot work here.
    with pytest.raises((AttributeError, RuntimeError, AssertionError)):
        torch.cuda.set_device(0)
    no_scontrol = str(tmp_path / 'empty')
    os.mkdir(no_scontrol)
    env = dict(SLURM_PROCID='5', SLURM_NTASKS='8', SLURM_LOCALID='1',
               SLURM_NODELIST='gpu-node[07-09,12]')
    backend, kwargs, got = _init_dist(monkeypatch, 'slurm', env, no_scontrol,
                                      timeout=60)
    assert backend == 'gloo'  # init_dist's default is nccl
    assert kwargs == dict(timeout=datetime.timedelta(seconds=60))
    # Without scontrol: the first host of the compact node list.
    assert got == dict(RANK='5', WORLD_SIZE='8', LOCAL_RANK='1',
                       MASTER_ADDR='gpu-node07', MASTER_PORT='29500')
    # A MASTER_ADDR already set wins; dist_cfg's port is used.
    _, _, got = _init_dist(monkeypatch, 'slurm',
                           dict(env, MASTER_ADDR='10.0.0.1'), no_scontrol,
                           backend='nccl', port=1234)
    assert got['MASTER_ADDR'] == '10.0.0.1' and got['MASTER_PORT'] == '1234'
    for node_list, host in (('a1,b[2-3]', 'a1'), ('n[1,4],m5', 'n1'),
                            ('node[03-05,9]', 'node03')):
        _, _, got = _init_dist(monkeypatch, 'slurm',
                               dict(env, SLURM_NODELIST=node_list),
                               no_scontrol)
        assert got['MASTER_ADDR'] == host, node_list
    # No SLURM_LOCALID: PROCID modulo the tasks per node (CUDA's device
    # count, mmengine's divisor, is 0 here).
    no_local = {k: v for k, v in env.items() if k != 'SLURM_LOCALID'}
    _, _, got = _init_dist(monkeypatch, 'slurm',
                           dict(no_local, SLURM_NTASKS_PER_NODE='4(x2)'),
                           no_scontrol)
    assert got['LOCAL_RANK'] == '1'
    # Where scontrol exists, mmengine asks it, as on a real cluster.
    fake_bin = tmp_path / 'bin'
    fake_bin.mkdir()
    scontrol = fake_bin / 'scontrol'
    scontrol.write_text('#!/bin/sh\necho from-scontrol1\necho '
                        'from-scontrol2\n')
    scontrol.chmod(0o755)
    _, _, got = _init_dist(monkeypatch, 'slurm', env,
                           str(fake_bin) + os.pathsep + system_path)
    assert got['MASTER_ADDR'] == 'from-scontrol1'


@needs_no_accelerator
def test_pytorch_and_mpi_env_through_mmengine(monkeypatch, tmp_path):
    path = str(tmp_path)
    env = dict(RANK='3', WORLD_SIZE='4', LOCAL_RANK='1',
               MASTER_ADDR='10.0.0.2', MASTER_PORT='2345')
    backend, kwargs, got = _init_dist(monkeypatch, 'pytorch', env, path)
    assert backend == 'gloo' and kwargs == {} and got == env
    env = dict(OMPI_COMM_WORLD_RANK='6', OMPI_COMM_WORLD_SIZE='8',
               OMPI_COMM_WORLD_LOCAL_RANK='2', MASTER_ADDR='10.0.0.3')
    backend, _, got = _init_dist(monkeypatch, 'mpi', env, path,
                                 backend='gloo')
    assert backend == 'gloo'
    assert got == dict(RANK='6', WORLD_SIZE='8', LOCAL_RANK='2',
                       MASTER_ADDR='10.0.0.3', MASTER_PORT='29500')


@needs_no_accelerator
def test_cpu_ddp_wrappers_get_no_device_ids(monkeypatch):
    """mmengine's Runner.wrap_model passes device_ids=[LOCAL_RANK], with or
    without a model_wrapper_cfg; in a process whose group mmengine's
    launcher started on the CPU, kcd_mm.compat drops it for a CPU module,
    so DDP accepts the module. Runs in a real 1-rank gloo group."""
    import types

    from mmengine.dist import init_dist
    from mmengine.dist import utils as dist_utils
    from mmengine.model import MMDistributedDataParallel
    from mmengine.runner import Runner
    from torch.nn.parallel import DistributedDataParallel
    for key, value in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0',
                           MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    # init_dist would otherwise switch this process to 'spawn'.
    monkeypatch.setattr(dist_utils.mp, 'set_start_method',
                        lambda *args, **kwargs: None)
    init_dist('pytorch')
    try:

        def wrap(cfg, model_wrapper_cfg):
            runner = types.SimpleNamespace(distributed=True,
                                           cfg=Config(cfg), logger=None)
            return Runner.wrap_model(runner, model_wrapper_cfg,
                                     torch.nn.Linear(4, 2))

        wrapped = wrap(dict(find_unused_parameters=True), None)
        assert type(wrapped) is MMDistributedDataParallel
        assert wrapped.device_ids is None
        assert wrapped.find_unused_parameters is True
        assert wrapped.broadcast_buffers is False
        wrapped = wrap({}, dict(type='MMDistributedDataParallel',
                                find_unused_parameters=True))
        assert type(wrapped) is MMDistributedDataParallel
        assert wrapped.device_ids is None
        assert wrapped.find_unused_parameters is True
        wrapped = wrap({}, dict(type='DistributedDataParallel'))
        assert type(wrapped) is DistributedDataParallel
        assert wrapped.device_ids is None
        # Positional device ids and an output device, straight to torch.
        wrapped = DistributedDataParallel(torch.nn.Linear(4, 2), [0], 0)
        assert wrapped.device_ids is None and wrapped.output_device is None
        del wrapped
    finally:
        tool_utils.destroy_process_group()
    assert not torch.distributed.is_initialized()
