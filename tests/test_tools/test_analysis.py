"""tools/analysis and the student converter, on a real tiny KCD run.

One KCD run (60 16-px images of 3 classes, 4 epochs, an E-step after each
of epochs 1-3: kept 50, 40, 30) is trained through tools/train.py once per
module; the tools then read its work dir as a user would run them.
"""
import os
import os.path as osp
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

from kcd_mm import analysis
from kcd_mm.labels import dataset_labels
from kcd_mm.records import (SNAPSHOT_DIR, check_consistency, read_records,
                            read_snapshots)
from kcd_mm.testing import make_image_folder, tiny_kcd_config, write_config
import helpers
from helpers import load_checkpoint, run_tool, stage_records

N, BATCH, CLASSES, EPOCHS = 60, 8, 3, 4
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PLOTS = ('value_distribution.png', 'kept_blended_dropped.png',
         'kept_per_class.png', 'sample_iterations.png')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """The work dir of a finished KCD run, and its training output."""
    root = tmp_path_factory.mktemp('analysis')
    data = make_image_folder(str(root / 'images'), num_images=N,
                             num_classes=CLASSES, size=16)
    cfg = write_config(
        tiny_kcd_config(data, max_epochs=EPOCHS, batch_size=BATCH),
        str(root / 'kcd_tiny.py'))
    work_dir = str(root / 'work')
    out = run_tool(['tools/train.py', cfg, '--work-dir', work_dir]).stdout
    return work_dir, out


def _class_of(path):
    """CustomDataset's class of an image: its folder, class_<c>."""
    return int(osp.basename(osp.dirname(path)).split('_')[1])


# ------------------------------------------------------------ plot_kcd
@pytest.mark.slow
@pytest.mark.multiprocess
def test_plot_kcd_writes_four_readable_pngs(run):
    from PIL import Image
    work_dir, _ = run
    out = run_tool(['tools/analysis/plot_kcd.py', work_dir]).stdout
    expected = [osp.join(work_dir, 'kcd_plots', name) for name in PLOTS]
    printed = [line.strip() for line in out.splitlines()
               if line.strip().endswith('.png')]
    assert sorted(printed) == sorted(expected), out
    for path in expected:
        with open(path, 'rb') as f:
            assert f.read(8) == PNG_SIGNATURE
        with Image.open(path) as img:
            img.load()
            width, height = img.size
        assert 300 <= width <= 3000 and 200 <= height <= 2000, (path,
                                                                img.size)
    assert "least kept class 'class_" in out


def _tool(path):
    """Import a tools/ script as a module (to call it in-process)."""
    import importlib.util

    from helpers import repo_root
    spec = importlib.util.spec_from_file_location(
        'kcd_tool_' + osp.basename(path)[:-3], osp.join(repo_root(), path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_kcd_without_dataset_skips_only_the_class_plot(
        run, tmp_path, capsys):
    """A config whose dataset cannot be built: three plots and a reason."""
    from mmengine.config import Config
    work_dir, _ = run
    cfg = Config.fromfile(osp.join(work_dir, 'kcd_tiny.py'))
    cfg.train_dataloader.dataset.dataset.type = 'NoSuchDataset'
    bad = write_config(cfg.to_dict(), str(tmp_path / 'bad.py'))
    plot = _tool('tools/analysis/plot_kcd.py')
    plot.main([work_dir, '--out', str(tmp_path / 'plots'), '--config', bad])
    out = capsys.readouterr().out
    assert 'skipped kept_per_class.png: cannot build the training dataset' \
        in out and 'NoSuchDataset' in out
    written = sorted(line for line in out.splitlines()
                     if line.endswith('.png') and not line.startswith('skip'))
    assert [osp.basename(p) for p in written] == sorted(
        set(PLOTS) - {'kept_per_class.png'})
    # Many classes: drawn as sorted curves instead of bars.
    snapshots = read_snapshots(work_dir)
    labels = np.arange(N) % 40
    fractions = analysis.per_class_kept_fractions(labels, snapshots, 40)
    path = str(tmp_path / 'many.png')
    plot.plot_classes(fractions, snapshots, [str(c) for c in range(40)],
                      path)
    with open(path, 'rb') as f:
        assert f.read(8) == PNG_SIGNATURE


def test_per_class_plot_counts_the_classes_present(run):
    """19 classes present among 1000 listed: 19 columns, named."""
    work_dir, _ = run
    snapshots = read_snapshots(work_dir)
    labels = (np.arange(N) % 19) * 50  # classes 0, 50, ..., 900
    dataset = type('Listed', (), {'metainfo': dict(
        classes=[f'c{i}' for i in range(1000)])})()
    fractions, names = analysis.present_class_fractions(labels, snapshots,
                                                        dataset)
    assert fractions.shape == (len(snapshots), 19)
    assert names == [f'c{50 * i}' for i in range(19)]
    assert not np.isnan(fractions).any()
    # Every kept sample is counted in its class's column.
    kept = np.isin(np.arange(N), snapshots[-1].kept)
    totals = np.bincount(labels)[np.unique(labels)]
    assert np.allclose(fractions[-1] * totals,
                       np.bincount(labels[kept], minlength=901)[
                           np.unique(labels)])


def test_numbers_behind_the_plots_match_the_record(run):
    work_dir, _ = run
    records = read_records(work_dir)
    assert records == stage_records(work_dir)
    assert [r['kept'] for r in records] == [50, 40, 30]

    frac = analysis.stage_fractions(records)
    kept = np.array([r['kept'] for r in records])
    blended = np.array([r['blended'] for r in records])
    dropped = np.array([r['dropped'] for r in records])
    np.testing.assert_allclose(frac['kept'], kept / N)
    np.testing.assert_allclose(frac['kept_plain'], (kept - blended) / N)
    np.testing.assert_allclose(frac['blended'], blended / N)
    np.testing.assert_allclose(frac['dropped'], dropped / N)
    np.testing.assert_allclose(
        frac['kept_plain'] + frac['blended'] + frac['dropped'], 1.0)

    # Sample curve: epoch 0 at 0, the record's points, then the last
    # checkpoint (30 samples an epoch after the last E-step).
    checkpoint = analysis.find_checkpoint(work_dir)
    assert osp.basename(checkpoint) == f'epoch_{EPOCHS}.pth'
    final = analysis.read_progress(checkpoint)
    epochs, kcd, kd = analysis.sample_curve(records, final)
    assert epochs.tolist() == [0, 1, 2, 3, 4]
    assert kcd[1:4].tolist() == [r['sample_iters'] for r in records]
    assert kd[1:4].tolist() == [r['full_kd_sample_iters'] for r in records]
    assert kcd.tolist() == [0, 60, 110, 150, 180]
    assert kd.tolist() == [0, 60, 120, 180, 240]
    assert analysis.sample_curve(records)[0].tolist() == [0, 1, 2, 3]


def test_snapshots_and_per_class_kept_fractions(run):
    work_dir, _ = run
    records = read_records(work_dir)
    snapshots = read_snapshots(work_dir)
    assert [s.stage for s in snapshots] == [1, 2, 3]
    assert check_consistency(records, snapshots) == []

    dataset = analysis.build_train_dataset(analysis.find_config(work_dir))
    labels = dataset_labels(dataset)
    paths = analysis.sample_paths(dataset, range(N))
    assert labels.tolist() == [_class_of(p) for p in paths]
    assert analysis.class_names(dataset, CLASSES) == [
        f'class_{c}' for c in range(CLASSES)]

    fractions = analysis.per_class_kept_fractions(labels, snapshots)
    assert fractions.shape == (3, CLASSES)
    for snap, record, row in zip(snapshots, records, fractions):
        kept_counts, totals = analysis.per_class_kept(labels, snap.kept)
        assert kept_counts.sum() == record['kept'] == len(snap.kept)
        assert totals.tolist() == [N // CLASSES] * CLASSES
        np.testing.assert_allclose(row * totals, kept_counts)
        kept_values, dropped_values = analysis.value_split(snap)
        assert len(kept_values) == record['kept']
        assert len(dropped_values) == record['dropped']
        assert len(snap.tail) == len(snap.lost) == record['blended']
        # Lost partners are dropped, tails kept.
        assert not snap.kept_mask()[snap.lost].any()
        assert snap.kept_mask()[snap.tail].all()


# ---------------------------------------------------------- inspect_kcd
def _section(lines, title_start):
    """Rows of the table that follows the line starting with title_start."""
    start = next(i for i, line in enumerate(lines)
                 if line.startswith(title_start))
    rows = []
    for line in lines[start + 2:]:  # skip the title and the header
        if not line.strip() or line.startswith('...'):
            break
        rows.append(line.split())
    return rows


@pytest.mark.slow
@pytest.mark.multiprocess
def test_inspect_kcd_table_and_dropped_files(run):
    work_dir, _ = run
    out = run_tool(['tools/analysis/inspect_kcd.py', work_dir, '--top', '5',
                    '--all-dropped']).stdout
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines)
                  if line.split()[:2] == ['stage', 'epoch'])
    table = [line.split() for line in lines[header + 1:header + 4]]
    for row, r in zip(table, stage_records(work_dir)):
        assert [int(x) for x in row[:5]] == [
            r['stage'], r['epoch'], r['kept'], r['blended'], r['dropped']]
        assert float(row[5]) == pytest.approx(100 * r['kept'] / N, abs=0.05)
        assert [int(x) for x in row[6:8]] == [
            r['sample_iters'], r['full_kd_sample_iters']]
        assert float(row[8]) == pytest.approx(
            100 * r['sample_iters'] / r['full_kd_sample_iters'], abs=0.05)
        # five significant digits
        assert row[9:11] == [f"{r['value_mean']:.5g}", f"{r['value_std']:.5g}"]
    assert 'at epoch_4.pth (epoch 4): 180 samples trained on, plain KD 240' \
        in out

    last = read_snapshots(work_dir)[-1]
    best = _section(lines, '5 most valuable')
    worst = _section(lines, '5 least valuable')
    order = np.argsort(-last.scores, kind='stable')
    assert [int(r[0]) for r in best] == order[:5].tolist()
    assert sorted(float(r[1]) for r in worst) == pytest.approx(
        sorted(last.scores.tolist())[:5], abs=1e-4)

    dropped = _section(lines, '30 samples dropped at stage 3')
    assert sorted(int(r[0]) for r in dropped) == last.dropped().tolist()
    for index, score, _, status, cls, since, path in dropped:
        assert status in ('dropped', 'dropped_blended')
        assert 1 <= int(since) <= 3
        assert osp.isfile(path), path
        assert cls == f'class_{_class_of(path)}'
        assert score == f'{last.scores[int(index)]:.5g}'


@pytest.mark.slow
def test_inspect_kcd_caps_the_dropped_listing(run, capsys):
    work_dir, _ = run
    inspect_kcd = _tool('tools/analysis/inspect_kcd.py')
    for argv, shown in (([], 20), (['--max-dropped', '5'], 5),
                        (['--all-dropped'], 30)):
        inspect_kcd.main([work_dir] + argv)
        lines = capsys.readouterr().out.splitlines()
        assert len(_section(lines, '30 samples dropped at stage 3')) == shown
        more = [line for line in lines if line.startswith('... and')]
        assert more == ([] if shown == 30 else [
            f'... and {30 - shown} more (--all-dropped prints all, '
            '--dropped-csv writes all)'
        ]), argv


@pytest.mark.slow
def test_inspect_kcd_keeps_the_digits_of_small_values(tmp_path, capsys):
    """A student that does not train (lr 0): its entropies sit near
    log 3, so the stage's value std is a few 1e-4 and the scores differ
    in their fourth decimal; both keep five significant digits."""
    data = make_image_folder(str(tmp_path / 'images'), num_images=N,
                             num_classes=CLASSES, size=16)
    cfg = tiny_kcd_config(data, max_epochs=2, batch_size=BATCH)
    cfg['optim_wrapper']['optimizer']['lr'] = 0.0
    work_dir = str(tmp_path / 'work')
    helpers.train_here(cfg, work_dir)
    record, = read_records(work_dir)
    assert 0 < record['value_std'] < 1e-3

    _tool('tools/analysis/inspect_kcd.py').main([work_dir, '--top', '3'])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines)
                  if line.split()[:2] == ['stage', 'epoch'])
    std = lines[header + 1].split()[10]
    assert std == f"{record['value_std']:.5g}"
    assert float(std) == pytest.approx(record['value_std'], rel=1e-4)
    snap = read_snapshots(work_dir)[-1]
    for index, score, mean_value, *_ in _section(lines, '3 most valuable'):
        i = int(index)
        assert float(score) == pytest.approx(snap.scores[i], rel=1e-5)
        assert float(mean_value) == pytest.approx(snap.mean_values[i],
                                                  rel=1e-5)


# --------------------------------------------------- damaged snapshots
def test_damaged_snapshots_are_skipped_and_the_tools_go_on(
        run, tmp_path, capsys):
    work_dir, _ = run
    copy = str(tmp_path / 'work')
    shutil.copytree(work_dir, copy)
    stages = osp.join(copy, SNAPSHOT_DIR)
    last = osp.join(stages, 'stage_003.npz')
    with open(last, 'r+b') as f:  # cut short
        f.truncate(osp.getsize(last) // 2)
    open(osp.join(stages, 'stage_002.npz'), 'w').close()  # empty
    with open(osp.join(stages, 'stage_004.npz.tmp'), 'wb') as f:
        f.write(b'PK\x03\x04')  # a killed write's leftover: not a snapshot

    with pytest.warns(UserWarning) as caught:
        snapshots = read_snapshots(copy)
    assert [s.stage for s in snapshots] == [1]
    messages = sorted(str(w.message) for w in caught
                      if w.category is UserWarning)
    assert len(messages) == 2, messages
    for message, name in zip(messages, ('stage_002.npz', 'stage_003.npz')):
        assert message.startswith('kcd_mm: skipped the damaged snapshot '
                                  f'{osp.join(stages, name)} (')
    assert check_consistency(read_records(copy), snapshots) == [
        'no snapshot for stage(s) [2, 3]']

    with pytest.warns(UserWarning, match='stage_003.npz'):
        _tool('tools/analysis/inspect_kcd.py').main(
            [copy, '--top', '3', '--max-dropped', '0'])
    out = capsys.readouterr().out
    assert 'warning: no snapshot for stage(s) [2, 3]' in out
    assert '3 most valuable samples at stage 1:' in out
    plots = str(tmp_path / 'plots')
    with pytest.warns(UserWarning, match='stage_002.npz'):
        _tool('tools/analysis/plot_kcd.py').main([copy, '--out', plots])
    assert 'warning: no snapshot for stage(s) [2, 3]' in \
        capsys.readouterr().out
    assert sorted(os.listdir(plots)) == sorted(PLOTS)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_killed_while_writing_a_snapshot_leaves_no_half_one(tmp_path):
    data = make_image_folder(str(tmp_path / 'images'), num_images=48,
                             num_classes=CLASSES, size=16)
    cfg = tiny_kcd_config(data, max_epochs=3, batch_size=BATCH)
    cfg['custom_imports']['imports'].append('kcd_probe')
    cfg['custom_hooks'].append(dict(type='mmrazor.SnapshotKillHook',
                                    stage=2))
    path = write_config(cfg, str(tmp_path / 'kcd_tiny.py'))
    work_dir = str(tmp_path / 'work')
    proc = run_tool(['tools/train.py', path, '--work-dir', work_dir],
                    env=helpers.probe_env(), check=False)
    assert proc.returncode == -9, proc.stdout[-3000:]  # SIGKILLed
    # Half of stage 2's snapshot reached the disk, as a .tmp only.
    stages = osp.join(work_dir, SNAPSHOT_DIR)
    assert sorted(os.listdir(stages)) == ['stage_001.npz',
                                          'stage_002.npz.tmp']
    assert osp.getsize(osp.join(stages, 'stage_002.npz.tmp')) > 0
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # nothing damaged to skip
        snapshots = read_snapshots(work_dir)
    assert [s.stage for s in snapshots] == [1]
    records = read_records(work_dir)
    assert [r['stage'] for r in records] == [1, 2]  # written just before
    assert check_consistency(records, snapshots) == [
        'no snapshot for stage(s) [2]']
    out = run_tool(['tools/analysis/inspect_kcd.py', work_dir, '--top',
                    '3']).stdout
    assert '3 most valuable samples at stage 1:' in out


# ----------------------------------------------------- student converter
def _final_val_accuracy(train_out):
    found = re.findall(r'Epoch\(val\).*?\saccuracy/top1: ([0-9.]+)',
                       train_out)
    assert found, train_out[-3000:]
    return float(found[-1])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_student_checkpoint_and_config(run, tmp_path):
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    from mmengine.runner import Runner

    work_dir, train_out = run
    src = osp.join(work_dir, f'epoch_{EPOCHS}.pth')
    dst, student_cfg = str(tmp_path / 'student.pth'), str(tmp_path / 's.py')
    out = run_tool([
        'tools/model_converters/convert_kcd_ckpt_to_student.py', src, dst,
        '--config', osp.join(work_dir, 'kcd_tiny.py'), '--out-config',
        student_cfg
    ]).stdout
    assert 'every key loads' in out

    saved = load_checkpoint(dst)
    assert set(saved) == {'meta', 'state_dict'}
    full = load_checkpoint(src)
    student_keys = [k for k in full['state_dict']
                    if k.startswith('architecture.')]
    assert sorted(saved['state_dict']) == sorted(
        k[len('architecture.'):] for k in student_keys)

    cfg = Config.fromfile(student_cfg)
    assert cfg.default_scope == 'mmpretrain'
    assert '_scope_' not in cfg.model and 'teacher' not in cfg
    assert 'custom_hooks' not in cfg and 'train_dataloader' not in cfg

    # Same logits as the distilled student inside the KCD algorithm.
    kcd_cfg = Config.fromfile(osp.join(work_dir, 'kcd_tiny.py'))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        algorithm = MODELS.build(kcd_cfg.model)
        student = MODELS.build(cfg.model)
        loader = Runner.build_dataloader(cfg.test_dataloader)
    algorithm.load_state_dict(full['state_dict'])
    student.load_state_dict(saved['state_dict'])
    algorithm.eval()
    student.eval()
    batch = next(iter(loader))
    with torch.no_grad():
        want = algorithm(**algorithm.data_preprocessor(batch), mode='tensor')
        got = student(**student.data_preprocessor(batch), mode='tensor')
    assert got.shape == (BATCH, CLASSES)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

    # tools/test.py on the student alone scores what the run's final
    # validation of the student did.
    test_out = run_tool(['tools/test.py', student_cfg, dst, '--work-dir',
                         str(tmp_path / 'test')]).stdout
    acc = re.findall(r'Epoch\(test\).*?\saccuracy/top1: ([0-9.]+)', test_out)
    assert acc, test_out[-3000:]
    assert float(acc[-1]) == _final_val_accuracy(train_out)


def test_student_config_of_the_imagenet_recipe():
    """MMRazor's ImageNet recipe: the student given by ``cfg_path`` and
    mmengine's ImgDataPreprocessor, which mmpretrain's ImageClassifier
    cannot take, becomes an equivalent ClsDataPreprocessor."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope

    from helpers import repo_root
    convert = _tool('tools/model_converters/convert_kcd_ckpt_to_student.py')
    kcd_cfg = Config.fromfile(
        osp.join(repo_root(), 'configs/kcd/kcd_r34_r18_imagenet.py'))
    cfg = convert.student_config(kcd_cfg)
    model = cfg['model']
    assert cfg['default_scope'] == 'mmpretrain'
    assert model['type'] == 'ImageClassifier' and 'cfg_path' not in model
    assert model['backbone']['depth'] == 18
    assert model['data_preprocessor']['type'] == 'ClsDataPreprocessor'
    assert cfg['val_cfg'] == {} and 'train_dataloader' not in cfg
    assert cfg['test_dataloader'] == kcd_cfg.test_dataloader.to_dict()
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        student_pre = MODELS.build(model['data_preprocessor'])
    with DefaultScope.overwrite_default_scope('mmrazor'):
        kcd_pre = MODELS.build(kcd_cfg.model.data_preprocessor)
    images = torch.randint(0, 256, (2, 3, 9, 11), dtype=torch.uint8)
    assert torch.equal(
        student_pre(dict(inputs=images))['inputs'],
        kcd_pre(dict(inputs=images))['inputs'])
