"""Failure policies: divergence flags, out-of-memory messages, refused `_target_`s, the environment record."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from test_configs import compose_with
from test_end_to_end import REPO, run

from tta_bench.cli import main_task
from tta_bench.report.collect import load_collection, with_labels
from tta_bench.report.paper import group_tables
from tta_bench.report.render import to_latex, to_markdown
from tta_bench.results import is_done
from tta_bench.safety import check_targets, instantiate
from tta_bench.tables import domain_table

THREE = "data.corruptions=[gaussian_noise,fog,contrast]"


def test_a_diverging_method_finishes_with_flagged_domains(embedded, tmp_path, capsys):
    # Adam with lr 1e30: the first step blows the weights up, later outputs are not finite.
    run_dir = run(embedded, tmp_path, "method=tent", "method.lr=1e30", "data.n_examples=100", THREE)
    assert is_done(run_dir)
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    flags = metrics.query("metric == 'diverged' and domain_index >= 0").set_index("domain")["value"]
    assert flags.to_dict() == {"gaussian_noise": 0.0, "fog": 1.0, "contrast": 1.0}
    assert "DIVERGED in 2 domain(s)" in capsys.readouterr().out
    assert domain_table(metrics)["flag"].tolist() == ["", "diverged", "diverged", "diverged"]
    rows = with_labels(load_collection(tmp_path).rows)
    error = group_tables(rows)["error"]
    markdown, latex = to_markdown(error), to_latex(error)
    assert "91.0†" in markdown and "13.0 " in markdown and "13.0†" not in markdown
    assert "† diverged" in markdown and "$^\\dagger$" in latex


def test_a_non_finite_loss_is_flagged_through_the_gradients(tiny_model):
    import tta_bench

    method = tta_bench.create_method("tent", tiny_model)
    assert method.pop_nonfinite_steps() is None
    method(torch.rand(4, 3, 6, 6))
    assert method.pop_nonfinite_steps().item() == 0
    x = torch.rand(4, 3, 6, 6)
    x[0, 0, 0, 0] = float("nan")  # a NaN input gives a NaN entropy loss
    method(x)
    assert method.pop_nonfinite_steps().item() == 1
    assert method.pop_nonfinite_steps() is None  # popped


def test_out_of_memory_is_one_clear_message_and_no_complete_record(embedded, tmp_path, monkeypatch, capsys):
    from tta_bench.methods.tent import Tent

    def out_of_memory(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Tent, "forward_and_adapt", out_of_memory)
    cfg = compose_with([f"data_root={embedded['data_root']}", f"model_dir={embedded['model_dir']}",
                        "progress=false", "device=cpu", "method=tent", "data.n_examples=50", THREE], tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main_task(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "out of memory on cpu" in err and "batch size 200" in err and "data.batch_size" in err
    (run_dir,) = (tmp_path / "runs").glob("*")
    assert not is_done(run_dir) and not (run_dir / "metrics.parquet").exists()


def test_targets_outside_tta_bench_are_refused(tmp_path):
    cfg = compose_with(["logger._target_=os.system"], tmp_path)
    with pytest.raises(Exception, match="refusing to instantiate _target_: os.system"):
        instantiate(cfg.logger)
    check_targets(compose_with([], tmp_path))  # the shipped configs pass
    with pytest.raises(Exception, match=r"\$\{oc.env:X\}"):
        check_targets(compose_with(["logger._target_=${oc.env:X}"], tmp_path))


@pytest.mark.parametrize("override", ["logger._target_=builtins.print",
                                      "+hydra.callbacks.evil._target_=builtins.print"])
def test_the_command_line_refuses_foreign_targets(override, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "run.py"), override, f"results_dir={tmp_path}"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "refusing to instantiate" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_record_holds_the_environment(embedded, tmp_path):
    run_dir = run(embedded, tmp_path, "method=source", "data.n_examples=50", THREE)
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["device_name"]
    assert len(env["git_commit"]) == 40 and isinstance(env["git_dirty"], bool)
    assert len(env["packages_sha256"]) == 64 and any(p.startswith("torch==") for p in env["packages"])
