"""Helpers for running tests: tools run as a user would, outputs read.

The tiny data and config builders live in :mod:`kcd_mm.testing`.

* :func:`repo_root`, :func:`free_port` and :func:`run_tool` help tests run
  the files in ``tools/`` as a user would.
* :func:`read_jsonl` and :func:`stage_records` read what a run wrote;
  :func:`load_checkpoint` loads a Runner checkpoint as kcd_mm's tools do.
"""
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

TESTS_DIR = osp.dirname(osp.abspath(__file__))  # kcd_probe lives here
REPO_ROOT = osp.dirname(TESTS_DIR)


def repo_root() -> str:
    """Return the absolute path of the kcd_mm repository."""
    return REPO_ROOT


def probe_env(**env: str) -> Dict[str, str]:
    """``env`` plus a PYTHONPATH starting with tests/, so a subprocess run
    can ``custom_imports`` the probe hooks of tests/kcd_probe.py."""
    path = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get(
        'PYTHONPATH')) if p)
    return dict(env, PYTHONPATH=path)


def load_checkpoint(path: str) -> dict:
    """A Runner checkpoint, weights-only with its plain-data types allowed
    for this load only (kcd_mm.compat.safe_loading)."""
    from kcd_mm.compat.safe_loading import load
    return load(path, map_location='cpu', weights_only=True)


def train_here(cfg: dict, work_dir: str):
    """Build a Runner from the config dict ``cfg`` in this process (no
    interpreter start-up), train it in ``work_dir`` and return it."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config(cfg)
    cfg.work_dir = work_dir
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_tool(args: Sequence[str],
             env: Optional[Dict[str, Optional[str]]] = None,
             timeout: float = 300,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run a command from the repository root and capture its output.

    ``args`` starting with a ``.py`` file run under this interpreter; a
    ``.sh`` file runs under bash. stdout and stderr are merged.

    Args:
        args (Sequence[str]): Tool path (relative to the repo) and its
            arguments.
        env (dict, optional): Extra environment variables; a value of
            None removes that variable (e.g. ``OMP_NUM_THREADS``).
        timeout (float): Seconds before the run is killed. Defaults to 300.
        check (bool): Raise ``AssertionError`` with the output when the
            command fails. Defaults to True.
    """
    args = list(args)
    if args[0].endswith('.py'):
        args = [sys.executable] + args
    elif args[0].endswith('.sh'):
        args = ['bash'] + args
    full_env = dict(os.environ)
    # The venv's bin first, so `python` inside the shell scripts is ours.
    full_env['PATH'] = (osp.dirname(sys.executable) + os.pathsep +
                        full_env.get('PATH', ''))
    # One OpenMP thread per process: tiny nets gain nothing from more, and
    # spinning thread pools slow down a busy 2-core machine badly.
    full_env.setdefault('OMP_NUM_THREADS', '1')
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    proc = subprocess.run(
        args,
        cwd=REPO_ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f'{" ".join(args)} exited with {proc.returncode}:\n'
            f'{proc.stdout[-6000:]}')
    return proc


def read_jsonl(path: str) -> List[Dict]:
    """Every line of a JSON-lines file, as written (file order)."""
    with open(path) as f:
        return [json.loads(line) for line in f]


def stage_records(work_dir: str, timings: bool = True) -> List[Dict]:
    """``<work_dir>/kcd_stages.jsonl`` as written; ``timings=False`` drops
    the fields that differ between identical runs (wall time, memory)."""
    rows = read_jsonl(osp.join(work_dir, 'kcd_stages.jsonl'))
    if not timings:
        for row in rows:
            row.pop('estep_seconds')
            row.pop('peak_rss_mib')
    return rows


def kcd_hook(runner):
    """The Runner's KCDHook (found by name, so probe hooks imported
    through ``custom_imports`` need not import kcd_mm's class)."""
    return next(h for h in runner.hooks if type(h).__name__ == 'KCDHook')


def upweighted_mask(state):
    """InfoBatch's up-weighted mask of a KCDState (None for the other
    selectors, and when InfoBatch weights nothing)."""
    return getattr(state.selector, 'upweighted', None)


def read_log(work_dir: str) -> str:
    """The text of the newest mmengine log file of a work dir."""
    logs = sorted(glob.glob(osp.join(str(work_dir), '*', '*.log')))
    assert logs, f'no mmengine log in {work_dir}'
    with open(logs[-1]) as f:
        return f.read()
