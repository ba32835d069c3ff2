"""One experiment from a composed config: open data, model and method, run the stream, record it."""

from __future__ import annotations

import dataclasses
import random
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from tta_bench import safety
from tta_bench.checkpoint import RunCheckpoint, restore

from tta_bench.data.datasets import Benchmark, DatasetInfo, dataset_info, open_benchmark
from tta_bench.data.streams import Segment, Stream, StreamSpec, build_stream, parse_setting
from tta_bench.data.tensors import as_float, to_nchw
from tta_bench.environment import device_name, environment_record
from tta_bench.errors import ConfigError, DataNotFoundError, Interrupted, OutOfMemory
from tta_bench.loggers import RunLogger
from tta_bench.memory import peak_memory_mb, reset_peak_memory
from tta_bench.methods import method_class
from tta_bench.methods.base import Hparams, Method, effective_batch_size
from tta_bench.methods.preparation import SourceData, prepare_method
from tta_bench.models import create_model, weights_fingerprint
from tta_bench.records import cost_rows, curve_rows, metric_rows
from tta_bench.results import is_done, run_dir_of, run_id_of, start_record, write_record
from tta_bench.runner import (DeviceSegment, Stopped, StreamResult, StreamState, adapt_stream, frozen_error,
                              labelled_batches, open_segment, plain_forward_seconds, slices)
from tta_bench.signals import StopSignals
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


def _set_up_method(exp: Experiment, cfg: DictConfig, model: torch.nn.Module, hparams: Hparams,
                   weights: str) -> Method:
    """Wrap the model in the method and run its cached preparation step when it has one."""
    method = method_class(cfg.method.name)(model, hparams)
    if method.needs_source:
        images, labels = exp.bench.load_clean("train")
        prepare_method(method, SourceData(images, labels, f"{exp.info.name}/train"),
                       Path(cfg.model_dir) / "preparation", weights, bool(cfg.progress))
    return method


def describe_run(cfg: DictConfig, run_id: str) -> str:
    """`run <id> (method, dataset setting, seed N)` for messages."""
    return f"run {run_id} ({cfg.method.name}, {cfg.data.name} {cfg.data.setting}, seed {cfg.seed})"


def run_experiment(cfg: DictConfig) -> Path:
    """Run one configured experiment end to end and return its run-record folder.

    A run whose record is complete is skipped (`force=true` reruns it); an unfinished one with a
    checkpoint continues from its last domain boundary.
    """
    config, _ = resolve(cfg)
    run_id = run_id_of(config)
    run_dir = run_dir_of(cfg.results_dir, run_id)
    if is_done(run_dir) and not cfg.force:
        print(f"skip: {describe_run(cfg, run_id)} is complete in {run_dir}; force=true reruns it")
        return run_dir
    exp, hparams = open_experiment(cfg)
    start_record(exp.run_dir)
    logger = safety.instantiate(cfg.logger, _partial_=True, _convert_="all")(exp.config, exp.run_id, exp.run_dir)
    failed = True
    try:
        with out_of_memory_message(exp, cfg.method.name):
            tables = _run(cfg, exp, hparams, logger)
        failed = False
    finally:
        logger.finish(failed)
    print(f"\n{cfg.method.name} on {exp.info.name} {cfg.data.setting} (run {exp.run_id}, {exp.run_dir})")
    print(render_text(domain_table(tables["metrics"])))
    print(run_summary(tables["metrics"], tables["cost"]))
    return exp.run_dir


@contextmanager
def out_of_memory_message(exp: Experiment, method: str) -> Iterator[None]:
    """Turn an out-of-memory error into one message naming the device and the batch size."""
    try:
        yield
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one; CPU allocation failures are plain ones
        text = str(exc).lower()
        if not isinstance(exc, torch.cuda.OutOfMemoryError) and "out of memory" not in text \
                and "can't allocate memory" not in text:
            raise
        raise OutOfMemory(
            f"out of memory on {exp.device} ({device_name(exp.device)}) running {method} with batch size "
            f"{exp.batch_size}: lower data.batch_size (or the method's batch_size), or use a device with more "
            f"memory. The run folder {exp.run_dir} has no 'done' marker, so no table counts it.") from exc


def _run(cfg: DictConfig, exp: Experiment, hparams: Hparams, logger: RunLogger) -> dict[str, pd.DataFrame]:
    """Set up, stream (from a checkpoint when there is one), measure forgetting, write the record."""
    environment = environment_record(exp.device)
    reset_peak_memory(exp.device)  # this run's peak, not an earlier job's in the same process
    seed_everything(int(cfg.seed))
    options = {k: v for k, v in cfg.model.items() if k != "name"}
    model = create_model(cfg.model.name, cfg.model_dir, cfg.data_root, bool(cfg.progress), **options).to(exp.device)
    weights = weights_fingerprint(model)
    first_batch = next(_open(exp, exp.stream.segments[0], slice(0, exp.batch_size)).batches)
    plain_seconds = plain_forward_seconds(model, as_float(first_batch))  # before the method changes the model
    method = _set_up_method(exp, cfg, model, hparams, weights)
    clean = _clean_test(exp) if cfg.forgetting else None
    checkpoint = RunCheckpoint(exp.run_dir, exp.run_id, weights)
    if cfg.force:
        checkpoint.remove()
    state = StreamState(len(exp.stream.domains), exp.info.num_classes, exp.stream.n_batches(exp.batch_size),
                        exp.device)
    saved = checkpoint.load(exp.device)
    if saved is None:
        clean_before = frozen_error(method, _tensor_batches(*clean, exp.batch_size)) if clean else None
        seed_everything(int(cfg.seed))
    else:
        clean_before = saved["extra"]["clean_before"]
        restore(saved, method, state)
        print(f"resuming {describe_run(cfg, exp.run_id)} after {state.position.batch} of "
              f"{len(state.batch_sizes)} batches, from {checkpoint.path}")
    result = _stream(cfg, exp, method, state, checkpoint, logger, clean_before)
    forgetting = _forgetting(exp, method, result, clean, clean_before) if cfg.forgetting else {}
    ids = _id_columns(exp, model, weights)
    tables = {
        "metrics": metric_rows(ids, exp.stream, result.per_domain, forgetting,
                               "label_shift" in parse_setting(cfg.data.setting)),
        "cost": cost_rows(ids, result, plain_seconds, exp.batch_size, peak_memory_mb(exp.device)),
        "curve": curve_rows(ids, result),
    }
    write_record(exp.run_dir, tables, OmegaConf.to_yaml(OmegaConf.create(exp.config)), environment)
    checkpoint.remove()
    logger.run_finished(tables)
    return tables


def _stream(cfg: DictConfig, exp: Experiment, method: Method, state: StreamState, checkpoint: RunCheckpoint,
            logger: RunLogger, clean_before: float | None) -> StreamResult:
    """The online pass with checkpoints at domain boundaries and a clean stop on SIGTERM/SIGUSR1/2."""
    last = len(exp.stream.segments)

    def on_boundary(state: StreamState, finished: np.ndarray | None, summary: dict | None) -> None:
        if finished is not None:
            logger.domains_finished(summary, [exp.stream.domains[d] for d in finished])
        if stop.signum is not None or (cfg.checkpoint and state.position.segment < last):
            checkpoint.save(method, state, {"clean_before": clean_before})

    with StopSignals() as stop:
        try:
            return adapt_stream(method, exp.bench, exp.stream, exp.batch_size, exp.info.num_classes, exp.device,
                                bool(cfg.progress), state=state, on_boundary=on_boundary, stop=stop)
        except Stopped as exc:
            stop.forward()  # submitit's handler requeues the job and exits here
            name = signal.Signals(exc.signum).name
            raise Interrupted(f"{name}: stopped {describe_run(cfg, exp.run_id)} after {exc.position.batch} of "
                              f"{len(state.batch_sizes)} batches; state saved to {checkpoint.path}. Run the same "
                              "command again to continue.", exc.signum) from None


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
