"""Runs that survive: skipping complete runs, checkpoints, SIGKILL/SIGTERM and exact resumption."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_end_to_end import run
from test_methods import _adapted, _prepared

import tta_bench
from conftest import assert_adapts_alike
from tta_bench.checkpoint import RunCheckpoint, rng_state, set_rng_state
from tta_bench.results import is_done

REPO = Path(__file__).resolve().parents[1]
FEW = "data.corruptions=[gaussian_noise,shot_noise,impulse_noise,fog,contrast,pixelate]"


@pytest.mark.parametrize("name", tta_bench.list_methods())
def test_a_method_loaded_from_a_checkpoint_file_adapts_like_the_original(name, tiny_model, tmp_path):
    """Every piece of state survives torch.save / torch.load(weights_only=True) mid-stream."""
    initial = copy.deepcopy(tiny_model)
    method = _adapted(name, tiny_model, tmp_path)
    torch.save(method.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(1)  # a different random init (e.g. RMT's projector) must be overwritten by the load
    restored = _prepared(name, initial, tmp_path)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert_adapts_alike(method, restored)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_complete_run_is_skipped_and_force_reruns_it(embedded, tmp_path, capsys):
    run_dir = run(embedded, tmp_path, "method=norm", "data.n_examples=50", FEW)
    stamp = (run_dir / "done").read_text()
    assert run(embedded, tmp_path, "method=norm", "data.n_examples=50", FEW) == run_dir
    assert "skip: run" in capsys.readouterr().out and (run_dir / "done").read_text() == stamp
    run(embedded, tmp_path, "method=norm", "data.n_examples=50", FEW, "force=true")
    assert (run_dir / "done").read_text() != stamp
    assert not (run_dir / "checkpoint.pt").exists()  # removed once the record is complete


def test_a_checkpoint_of_another_run_is_ignored(embedded, tmp_path, capsys):
    run_dir = run(embedded, tmp_path, "method=tent", "data.n_examples=50", FEW)
    checkpoint = RunCheckpoint(run_dir, "another-run", "weights")
    torch.save({"format": 1, "run_id": "another-run"}, checkpoint.path)
    (run_dir / "done").unlink()
    run(embedded, tmp_path, "method=tent", "data.n_examples=50", FEW)
    assert "ignoring checkpoint" in capsys.readouterr().out and is_done(run_dir)


def _command(embedded, results: Path, method: str) -> list[str]:
    return [sys.executable, str(REPO / "run.py"), f"method={method}", "data.n_examples=400", FEW, "progress=false",
            "device=cpu", f"results_dir={results}", f"data_root={embedded['data_root']}",
            f"model_dir={embedded['model_dir']}", "hydra.run.dir=" + str(results / "hydra")]


def _start_and_signal(command: list[str], results: Path, signum: int) -> subprocess.CompletedProcess:
    """Start a run, send `signum` as soon as its first checkpoint exists, and wait for it to end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(results.glob("runs/*/checkpoint.pt")):
        assert proc.poll() is None, f"the run ended before its first checkpoint:\n{proc.communicate()[1]}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _metrics(results: Path) -> pd.DataFrame:
    (run_dir,) = results.glob("runs/*")
    assert is_done(run_dir)
    return pd.read_parquet(run_dir / "metrics.parquet")


# tent is deterministic; deyo draws random augmentations, so its RNG state must survive too.
@pytest.mark.parametrize(("method", "signum"), [("tent", signal.SIGKILL), ("deyo", signal.SIGTERM)])
def test_a_killed_run_continues_to_exactly_the_same_metrics(method, signum, embedded, tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    stopped = _start_and_signal(_command(embedded, killed, method), killed, signum)
    assert stopped.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum)
    if signum == signal.SIGTERM:  # a clean stop: a message and a checkpoint, no traceback
        assert "stopped: SIGTERM" in stopped.stderr and "Traceback" not in stopped.stderr
    (run_dir,) = killed.glob("runs/*")
    assert (run_dir / "checkpoint.pt").is_file() and not is_done(run_dir)
    resumed = subprocess.run(_command(embedded, killed, method), cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run" in resumed.stdout
    subprocess.run(_command(embedded, whole, method) + ["checkpoint=false"], cwd=REPO, check=True,
                   capture_output=True)
    pd.testing.assert_frame_equal(_metrics(killed), _metrics(whole), check_exact=True)


def test_stop_signals_are_polled_then_forwarded_to_the_previous_handler():
    from tta_bench.signals import StopSignals

    received = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)
            assert stop.signum == signal.SIGUSR2 and received == []  # only a request so far
            stop.forward()  # e.g. submitit's requeue handler
            assert received == [signal.SIGUSR2]
        os.kill(os.getpid(), signal.SIGUSR2)  # the previous handler is back
        time.sleep(0.01)
        assert received == [signal.SIGUSR2, signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


class StopAfter:
    """A stop request that appears once `n` batches have been adapted on (polled after each batch)."""

    def __init__(self, method, n: int):
        self.method, self.n, self.calls = method, n, 0
        original = method.forward_and_adapt

        def counting(x):
            self.calls += 1
            return original(x)

        method.forward_and_adapt = counting

    @property
    def signum(self):
        return signal.SIGUSR1 if self.calls >= self.n else None


def test_a_stop_in_the_middle_of_a_domain_resumes_exactly(embedded, tmp_path):
    from test_configs import compose_with

    from tta_bench.checkpoint import restore
    from tta_bench.experiment import open_experiment
    from tta_bench.models import create_model
    from tta_bench.runner import Stopped, StreamState, adapt_stream

    cfg = compose_with([f"data_root={embedded['data_root']}", f"model_dir={embedded['model_dir']}", "progress=false",
                        "device=cpu", "method=deyo", "data.n_examples=100", "data.batch_size=50", FEW], tmp_path)
    exp, hparams = open_experiment(cfg)

    def fresh():
        model = create_model("digits_c", embedded["model_dir"], embedded["data_root"], progress=False)
        torch.manual_seed(1)
        return tta_bench.create_method("deyo", model, family="cifar")

    def stream(method, state=None, on_boundary=None, stop=None):
        return adapt_stream(method, exp.bench, exp.stream, 50, 10, torch.device("cpu"), False, state, on_boundary, stop)

    whole = stream(fresh())
    saved = {}

    def keep(state, finished, summary):
        saved.update(method=copy.deepcopy(first.state_dict()), stream=state.state_dict(), rng=rng_state())

    first = fresh()
    with pytest.raises(Stopped) as stopped:
        stream(first, on_boundary=keep, stop=StopAfter(first, 5))  # 2 batches per domain: stops inside domain 3
    assert stopped.value.position.segment == 2 and stopped.value.position.offset == 50
    torch.manual_seed(123)  # whatever happened since, the checkpoint's RNG state is what counts
    second, state = fresh(), StreamState(len(exp.stream.domains), 10, exp.stream.n_batches(50), torch.device("cpu"))
    restore(saved, second, state)
    resumed = stream(second, state)
    for key, value in whole.per_domain.items():
        np.testing.assert_array_equal(resumed.per_domain[key], value, err_msg=key)
    np.testing.assert_array_equal(resumed.batch_errors, whole.batch_errors)


class Payload:
    """Any class: torch.load(weights_only=True) must refuse to construct it."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_checkpoint_with_pickled_objects_is_not_loaded(tmp_path, capsys):
    checkpoint = RunCheckpoint(tmp_path, "run", "weights")
    torch.save({"format": 1, "run_id": "run", "weights_sha256": "weights", "method": Payload()}, checkpoint.path)
    assert checkpoint.load(torch.device("cpu")) is None
    out = capsys.readouterr().out
    assert "ignoring unreadable checkpoint" in out and "code ran while loading" not in out
