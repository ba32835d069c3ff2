"""One experiment from a composed config: open data, model and method, run the stream, record it."""

from __future__ import annotations

import dataclasses
import random
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tta_bench.data.datasets import Benchmark, DatasetInfo, dataset_info, open_benchmark
from tta_bench.data.streams import Stream, StreamSpec, build_stream, parse_setting
from tta_bench.errors import ConfigError, DataNotFoundError
from tta_bench.methods import method_class
from tta_bench.methods.base import Method
from tta_bench.methods.preparation import SourceData, prepare_method
from tta_bench.models import create_model, weights_fingerprint
from tta_bench.records import cost_rows, curve_rows, metric_rows
from tta_bench.results import run_dir_of, run_id_of, start_record, write_record
from tta_bench.runner import (
    StreamResult,
    adapt_stream,
    as_float,
    frozen_error,
    load_segment,
    plain_forward_seconds,
    to_device_images,
)
from tta_bench.tables import domain_table, render_text, run_summary


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; an explicit `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or (name.startswith("cuda") and torch.cuda.is_available()):
        return torch.device(name)
    if name.startswith("cuda"):
        raise ConfigError(f"device={name} but no CUDA device is available; use device=auto or device=cpu")
    raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stream_spec(data: DictConfig, seed: int) -> StreamSpec:
    """The stream parameters of the `data` config group."""
    parse_setting(data.setting)
    return StreamSpec(setting=data.setting, corruptions=tuple(data.corruptions), severities=tuple(data.severities),
                      n_examples=int(data.n_examples), seed=seed, shuffle=bool(data.shuffle),
                      dirichlet_delta=float(data.dirichlet_delta), rounds=int(data.rounds),
                      label_shift_alpha=float(data.label_shift_alpha))


@dataclass
class Experiment:
    """Everything a run needs, resolved from the config."""

    config: dict[str, Any]
    run_id: str
    run_dir: Path
    info: DatasetInfo
    bench: Benchmark
    stream: Stream
    device: torch.device


def resolve(cfg: DictConfig) -> tuple[dict[str, Any], Any]:
    """Resolved config with the method's effective hyperparameters filled in, and those hparams."""
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    dataset_info(cfg.data.name)
    overrides = {k: v for k, v in config["method"].items() if k != "name" and v is not None}
    hparams = method_class(cfg.method.name).make_hparams(cfg.data.family, **overrides)
    config["method"].update(dataclasses.asdict(hparams))
    if int(cfg.data.batch_size) < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
    parse_setting(cfg.data.setting)
    return config, hparams


def _clean_test(bench: Benchmark, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        images, labels = bench.load_clean("test")
    except DataNotFoundError as exc:
        print(f"note: no clean-split forgetting for {bench.info.name}: {exc}")
        return None
    return to_device_images(images, device), torch.from_numpy(labels).to(device)


def _first_domain(exp: Experiment) -> tuple[torch.Tensor, torch.Tensor]:
    segment = next(s for s in exp.stream.segments if (s.domain_ids == 0).any())
    keep = segment.domain_ids == 0
    sub = type(segment)(segment.domain_ids[keep], segment.rows[keep])
    data = load_segment(exp.bench, exp.stream, sub, exp.device)
    return data.images, data.labels


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_experiment(cfg: DictConfig) -> Path:
    """Run one configured experiment end to end and return its run-record folder."""
    config, hparams = resolve(cfg)
    device = resolve_device(cfg.device)
    run_id = run_id_of(config)
    run_dir = run_dir_of(cfg.results_dir, run_id)
    info = dataset_info(cfg.data.name)
    seed_everything(int(cfg.seed))
    bench = open_benchmark(info.name, Path(cfg.data_root), tuple(cfg.data.corruptions), bool(cfg.progress))
    stream = build_stream(stream_spec(cfg.data, int(cfg.seed)), bench.labels, info.num_classes)
    exp = Experiment(config, run_id, run_dir, info, bench, stream, device)
    start_record(run_dir)
    model = create_model(cfg.model.name, cfg.model_dir, cfg.data_root, bool(cfg.progress)).to(device)
    weights = weights_fingerprint(model)
    batch_size = int(cfg.data.batch_size)
    first_batch = as_float(load_segment(bench, stream, stream.segments[0], device).images[:batch_size])
    plain_seconds = plain_forward_seconds(model, first_batch)
    method = method_class(cfg.method.name)(model, hparams)
    if method.needs_source:
        images, labels = bench.load_clean("train")
        prepare_method(method, SourceData(images, labels, f"{info.name}/train"),
                       Path(cfg.model_dir) / "preparation", weights, bool(cfg.progress))
    clean = _clean_test(bench, device) if cfg.forgetting else None
    clean_before = frozen_error(method, *clean, batch_size) if clean else None
    seed_everything(int(cfg.seed))
    result = adapt_stream(method, bench, stream, batch_size, info.num_classes, device, bool(cfg.progress))
    forgetting = _forgetting(exp, method, result, clean, clean_before, batch_size) if cfg.forgetting else {}
    ids = _id_columns(exp, weights)
    tables = {
        "metrics": metric_rows(ids, stream, result.per_domain, forgetting, "label_shift" in parse_setting(cfg.data.setting)),
        "cost": cost_rows(ids, result, plain_seconds, batch_size, _peak_memory_mb(device)),
        "curve": curve_rows(ids, result),
    }
    write_record(run_dir, tables, OmegaConf.to_yaml(OmegaConf.create(config)))
    print(f"\n{method.name} on {info.name} {cfg.data.setting} (run {run_id}, {run_dir})")
    print(render_text(domain_table(tables["metrics"])))
    print(run_summary(tables["metrics"], tables["cost"]))
    return run_dir


def _forgetting(exp: Experiment, method: Method, result: StreamResult, clean: Any, clean_before: float | None,
                batch_size: int) -> dict[str, float]:
    """Frozen post-stream errors on the clean test split and the first domain, and the differences."""
    out: dict[str, float] = {}
    if clean is not None:
        out["clean_error_before"] = clean_before
        out["clean_error_after"] = frozen_error(method, *clean, batch_size)
        out["forgetting_clean"] = out["clean_error_after"] - clean_before
    out["first_domain_error_after"] = frozen_error(method, *_first_domain(exp), batch_size)
    out["forgetting_first_domain"] = out["first_domain_error_after"] - float(result.per_domain["error"][0])
    return out


def _id_columns(exp: Experiment, weights: str) -> dict[str, Any]:
    c = exp.config
    return {
        "run_id": exp.run_id, "method": c["method"]["name"], "model": c["model"]["name"],
        "dataset": exp.info.name, "setting": c["data"]["setting"], "seed": int(c["seed"]),
        "batch_size": int(c["data"]["batch_size"]), "n_examples": int(c["data"]["n_examples"]),
        "weights_sha256": weights, "device": str(exp.device), "torch_version": torch.__version__,
    }
