"""Over the same values, 2 gloo ranks and 1 process pick the same kept set.

In a real run the two differ anyway (each rank's batches differ, so the
student and its values differ); given equal values the E-step is
independent of how records were split across ranks, which is what this
shows with real processes and mmengine's all-reduce.
"""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kcd_mm import KCDOptions, KCDState

N, EPOCHS = 500, 3
OPTIONS = KCDOptions(stage_epochs=1, theta=0.6, num_steps=2)


def _values(epoch):
    g = torch.Generator().manual_seed(epoch)
    return torch.randperm(N, generator=g), torch.rand(N, generator=g)


def _run(state, rank, world, reduce_fn):
    for epoch in range(EPOCHS):
        order, values = _values(epoch)
        mine = order[rank::world]  # a DefaultSampler-like shard
        state.bank.record(mine, values[mine])
        state.merge(reduce_fn)
        state.estep(epoch + 1)
    return state


def _worker(rank, world, init_file, out):
    from mmengine.dist import all_reduce

    import kcd_mm  # noqa: F401
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world)

    def reduce_fn(t):
        all_reduce(t, op='sum')
        return t

    state = _run(KCDState(N, OPTIONS), rank, world, reduce_fn)
    torch.save(state.state_dict(), f'{out}.{rank}')
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / 'state')
    mp.spawn(_worker, args=(2, str(tmp_path / 'init'), out), nprocs=2)
    single = _run(KCDState(N, OPTIONS), 0, 1, None).state_dict()
    for rank in (0, 1):
        state = torch.load(f'{out}.{rank}', weights_only=True)
        assert torch.equal(state['kept'], single['kept'])
        for key in ('tail', 'lost', 'lam'):
            assert torch.equal(state['pairs'][key], single['pairs'][key])
        assert torch.equal(state['bank']['visits'], single['bank']['visits'])
        assert torch.allclose(state['bank']['value_sum'],
                              single['bank']['value_sum'])
    assert single['kept'].numel() == 300  # 500 -> 400 -> 300 (floor)


def _dataset_worker(rank, world, init_file, out):
    import kcd_mm  # noqa: F401
    from kcd_mm.checks import check_same_dataset_on_ranks
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world)
    try:
        check_same_dataset_on_ranks(100, 'same')  # agree: no error
        check_same_dataset_on_ranks(100, f'fingerprint{rank}')
        message = 'no error'
    except ValueError as error:
        message = str(error)
    with open(f'{out}.{rank}', 'w') as f:
        f.write(message)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ranks_with_different_datasets_are_refused(tmp_path):
    out = str(tmp_path / 'message')
    mp.spawn(_dataset_worker, args=(2, str(tmp_path / 'init'), out),
             nprocs=2)
    for rank in (0, 1):
        with open(f'{out}.{rank}') as f:
            assert 'The ranks see different training sets' in f.read()
