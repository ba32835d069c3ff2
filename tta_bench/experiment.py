"""One experiment from a composed config: open data, model and method, run the stream, record it."""

from __future__ import annotations

import dataclasses
import random
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tta_bench.data.datasets import Benchmark, DatasetInfo, dataset_info, open_benchmark
from tta_bench.data.streams import Segment, Stream, StreamSpec, build_stream, parse_setting
from tta_bench.data.tensors import as_float, to_nchw
from tta_bench.errors import ConfigError, DataNotFoundError
from tta_bench.methods import method_class
from tta_bench.methods.base import Hparams, Method, effective_batch_size
from tta_bench.methods.preparation import SourceData, prepare_method
from tta_bench.models import create_model, weights_fingerprint
from tta_bench.records import cost_rows, curve_rows, metric_rows
from tta_bench.results import run_dir_of, run_id_of, start_record, write_record
from tta_bench.runner import (DeviceSegment, StreamResult, adapt_stream, frozen_error, labelled_batches, open_segment,
                              plain_forward_seconds, slices)
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
    batch_size: int  # effective: the method's own batch_size hyperparameter when set, else data.batch_size


def resolve(cfg: DictConfig) -> tuple[dict[str, Any], Hparams]:
    """Resolved config with the method's effective hyperparameters filled in, and those hparams."""
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    dataset_info(cfg.data.name)
    overrides = {k: v for k, v in config["method"].items() if k != "name" and v is not None}
    hparams = method_class(cfg.method.name).make_hparams(cfg.data.family, **overrides)
    config["method"].update(dataclasses.asdict(hparams))
    if int(cfg.data.batch_size) < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
    effective_batch_size(hparams, cfg.data.batch_size)
    parse_setting(cfg.data.setting)
    return config, hparams


def open_experiment(cfg: DictConfig) -> tuple[Experiment, Hparams]:
    """Validate the config (cheap checks first), then open the data and build the stream."""
    config, hparams = resolve(cfg)
    device = resolve_device(cfg.device)
    run_id = run_id_of(config)
    info = dataset_info(cfg.data.name)
    bench = open_benchmark(info.name, Path(cfg.data_root), tuple(cfg.data.corruptions), bool(cfg.progress),
                           int(cfg.data.n_examples), cfg.data.get("image_list"), int(cfg.data.get("loader_workers", 4)))
    stream = build_stream(stream_spec(cfg.data, int(cfg.seed)), bench.labels, info.num_classes)
    exp = Experiment(config, run_id, run_dir_of(cfg.results_dir, run_id), info, bench, stream, device,
                     effective_batch_size(hparams, cfg.data.batch_size))
    return exp, hparams


def _open(exp: Experiment, segment: Segment, keep: np.ndarray | slice) -> DeviceSegment:
    """Part of a segment, on the device."""
    part = Segment(segment.domain_ids[keep], segment.rows[keep])
    return open_segment(exp.bench, exp.stream, part, exp.batch_size, exp.device)


def _clean_test(exp: Experiment) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        images, labels = exp.bench.load_clean("test")
    except DataNotFoundError as exc:
        print(f"note: no clean-split forgetting for {exp.info.name}: {exc}")
        return None
    return to_nchw(images, exp.device), torch.from_numpy(labels).to(exp.device)


def _tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return zip(slices(images, batch_size), slices(labels, batch_size))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _set_up_method(exp: Experiment, cfg: DictConfig, model: torch.nn.Module, hparams: Hparams,
                   weights: str) -> Method:
    """Wrap the model in the method and run its cached preparation step when it has one."""
    method = method_class(cfg.method.name)(model, hparams)
    if method.needs_source:
        images, labels = exp.bench.load_clean("train")
        prepare_method(method, SourceData(images, labels, f"{exp.info.name}/train"),
                       Path(cfg.model_dir) / "preparation", weights, bool(cfg.progress))
    return method


def run_experiment(cfg: DictConfig) -> Path:
    """Run one configured experiment end to end and return its run-record folder."""
    exp, hparams = open_experiment(cfg)
    start_record(exp.run_dir)
    seed_everything(int(cfg.seed))
    options = {k: v for k, v in cfg.model.items() if k != "name"}
    model = create_model(cfg.model.name, cfg.model_dir, cfg.data_root, bool(cfg.progress), **options).to(exp.device)
    weights = weights_fingerprint(model)
    first_batch = next(_open(exp, exp.stream.segments[0], slice(0, exp.batch_size)).batches)
    plain_seconds = plain_forward_seconds(model, as_float(first_batch))  # before the method changes the model
    method = _set_up_method(exp, cfg, model, hparams, weights)
    clean = _clean_test(exp) if cfg.forgetting else None
    clean_before = frozen_error(method, _tensor_batches(*clean, exp.batch_size)) if clean else None
    seed_everything(int(cfg.seed))
    result = adapt_stream(method, exp.bench, exp.stream, exp.batch_size, exp.info.num_classes, exp.device,
                          bool(cfg.progress))
    forgetting = _forgetting(exp, method, result, clean, clean_before) if cfg.forgetting else {}
    ids = _id_columns(exp, model, weights)
    tables = {
        "metrics": metric_rows(ids, exp.stream, result.per_domain, forgetting,
                               "label_shift" in parse_setting(cfg.data.setting)),
        "cost": cost_rows(ids, result, plain_seconds, exp.batch_size, _peak_memory_mb(exp.device)),
        "curve": curve_rows(ids, result),
    }
    write_record(exp.run_dir, tables, OmegaConf.to_yaml(OmegaConf.create(exp.config)))
    print(f"\n{method.name} on {exp.info.name} {cfg.data.setting} (run {exp.run_id}, {exp.run_dir})")
    print(render_text(domain_table(tables["metrics"])))
    print(run_summary(tables["metrics"], tables["cost"]))
    return exp.run_dir


def _forgetting(exp: Experiment, method: Method, result: StreamResult, clean: Any,
                clean_before: float | None) -> dict[str, float]:
    """Frozen post-stream errors on the clean test split and the first domain, and the differences."""
    out: dict[str, float] = {}
    if clean is not None:
        out["clean_error_before"] = clean_before
        out["clean_error_after"] = frozen_error(method, _tensor_batches(*clean, exp.batch_size))
        out["forgetting_clean"] = out["clean_error_after"] - clean_before
    segment = next(s for s in exp.stream.segments if (s.domain_ids == 0).any())
    first_domain = labelled_batches(_open(exp, segment, segment.domain_ids == 0))
    out["first_domain_error_after"] = frozen_error(method, first_domain)
    out["forgetting_first_domain"] = out["first_domain_error_after"] - float(result.per_domain["error"][0])
    return out


def _id_columns(exp: Experiment, model: torch.nn.Module, weights: str) -> dict[str, Any]:
    c = exp.config
    return {
        "run_id": exp.run_id, "method": c["method"]["name"], "model": c["model"]["name"],
        "dataset": exp.info.name, "setting": c["data"]["setting"], "seed": int(c["seed"]),
        "batch_size": exp.batch_size, "n_examples": int(c["data"]["n_examples"]),
        "weights": getattr(model, "weights_id", c["model"]["name"]), "weights_sha256": weights,
        "device": str(exp.device), "torch_version": torch.__version__,
        "model_parameters": sum(p.numel() for p in model.parameters()),
    }
