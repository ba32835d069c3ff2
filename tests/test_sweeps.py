"""Sweeps through the submitit launcher plugin, and the Weights & Biases logger in offline mode."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_end_to_end import REPO, run

from tta_bench.results import is_done

THREE = "data.corruptions=[gaussian_noise,fog,contrast]"


@pytest.mark.parametrize(("preset", "launcher"), [("slurm", "SlurmLauncher"), ("local", "LocalLauncher")])
def test_launcher_presets_compose_onto_the_submitit_plugin(preset, launcher):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True)
    node = cfg.hydra.launcher
    assert node._target_ == f"hydra_plugins.hydra_submitit_launcher.submitit_launcher.{launcher}"
    if preset == "slurm":
        assert node.max_num_timeout > 0 and node.gpus_per_node == 1
        assert any("WANDB_MODE" in line for line in node.setup) and "export TTA_PROGRESS=false" in node.setup


def test_a_local_submitit_sweep_writes_every_record_and_reruns_nothing(embedded, tmp_path):
    command = [sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=local", "method=source,norm,tent",
               "data.n_examples=200", THREE, f"results_dir={tmp_path}", f"data_root={embedded['data_root']}",
               f"model_dir={embedded['model_dir']}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    assert "Comparison on digits_c continual" in first.stdout  # printed by the launching process
    runs = sorted((tmp_path / "runs").glob("*"))
    assert len(runs) == 3 and all(is_done(r) for r in runs)
    stamps = [(r / "done").read_text() for r in runs]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    assert [(r / "done").read_text() for r in runs] == stamps  # nothing was rerun
    logs = "".join(p.read_text() for p in tmp_path.glob("hydra/multirun/*/*/.submitit/*/*_log.out"))
    assert logs.count("skip: run") == 3


def wandb_records(path: Path) -> list:
    """Protobuf records of an offline W&B run file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    raw, block, pos, records, pending = path.read_bytes(), 32768, 7, [], b""  # 7: the ':W&B' file header
    assert raw.startswith(b":W&B")
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pending, pos = pending + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_holds_config_and_per_domain_metrics(embedded, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = run(embedded, tmp_path, "method=tent", "data.n_examples=100", THREE, "logger=wandb")
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    history = [{item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    per_domain = [h for h in history if "domain/error" in h]
    assert [h["domain/name"] for h in per_domain] == ['"gaussian_noise"', '"fog"', '"contrast"']
    assert all(0 <= float(h["domain/error"]) <= 1 for h in per_domain)
    assert any(k.startswith("plots/error_per_domain") for h in history for k in h)
    assert any(k.startswith("metrics") for h in history for k in h)  # the tidy table
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config_keys = {item.key for item in run_record.config.update}
    assert {"method", "data", "seed", "run_id"} <= config_keys
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # wandb.finish() ran
