"""RMT: robust mean teacher (symmetric CE, contrastive alignment to source prototypes, source replay)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tta_bench.data.tensors import as_float, to_nchw
from tta_bench.methods.augment import COTTA, CoTTAAugment
from tta_bench.methods.base import Method, OptimizerHparams
from tta_bench.methods.losses import symmetric_cross_entropy
from tta_bench.methods.norm_layers import use_batch_statistics
from tta_bench.methods.registry import register_method
from tta_bench.methods.teacher import ema_update, make_teacher, restorable_parameters
from tta_bench.models.split import classifier_of, features_and_logits
from tta_bench.progress import progress_bar


@dataclass(frozen=True)
class RMTHparams(OptimizerHparams):
    """RMT's loss weights, teacher momentum, contrastive set-up and source-data budget."""

    teacher_momentum: float = 0.999
    lambda_ce_trg: float = 1.0  # symmetric CE student vs teacher (self-training)
    lambda_cont: float = 1.0  # contrastive alignment to the source prototypes
    lambda_ce_src: float = 1.0  # CE on replayed labelled source batches (0 = source-free)
    temperature: float = 0.1
    projection_dim: int = 128
    warmup_samples: int = 50000  # warm-up steps = warmup_samples // source_batch_size (0 = none)
    prototype_samples: int = 100000  # source samples for the class prototypes (at most)
    source_batch_size: int = 200  # the official code uses the test batch size


CIFAR = dict(optimizer="adam", lr=1e-3, source_batch_size=200)
IMAGENET = dict(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True, source_batch_size=64)


class ShuffledSource:
    """Labelled source images held on the device, served in shuffled epochs of `batch_size`.

    Mirrors the official shuffled source DataLoader (drop_last=False, so an epoch may end with a
    smaller batch); the permutation is drawn with torch's generator on the device and the position
    is a host integer, so drawing a batch needs no host sync.
    """

    def __init__(self, source: Any, batch_size: int, device: torch.device):
        self.images = to_nchw(source.images, device)
        self.labels = torch.from_numpy(source.labels).to(device)
        self.batch_size = batch_size
        self._order = torch.empty(0, dtype=torch.long, device=device)
        self._start = 0

    def __len__(self) -> int:
        return len(self.labels)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the source data in a fresh random order."""
        for idx in torch.randperm(len(self), device=self.labels.device).split(self.batch_size):
            yield as_float(self.images[idx]), self.labels[idx]

    def position(self) -> dict[str, Any]:
        """Where the endless stream stands (the current epoch's order and the next index)."""
        return {"order": self._order.clone(), "start": self._start}

    def seek(self, position: dict[str, Any]) -> None:
        """Continue from a `position`."""
        self._order, self._start = position["order"].clone(), position["start"]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the endless stream of shuffled epochs."""
        if self._start >= len(self._order):
            self._order, self._start = torch.randperm(len(self), device=self.labels.device), 0
        idx = self._order[self._start : self._start + self.batch_size]
        self._start += self.batch_size
        return as_float(self.images[idx]), self.labels[idx]


def contrastive_loss(views: torch.Tensor, projector: nn.Module, temperature: float) -> torch.Tensor:
    """SupCon loss without labels (SimCLR form, contrast mode 'all') over views (B, V, d).

    The B*V views are projected and L2-normalised; each is an anchor whose positives are the other
    V-1 views of the same sample and whose denominator runs over all other B*V-1 views. The loss
    is the negative mean log-probability of the positives, averaged over all anchors.
    """
    b, v, _ = views.shape
    z = F.normalize(projector(views.transpose(0, 1).reshape(b * v, -1)), dim=1)  # view-major order
    self_mask = torch.eye(b * v, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - logits.logsumexp(1, keepdim=True)
    positives = torch.eye(b, dtype=torch.bool, device=z.device).repeat(v, v) & ~self_mask
    # masked_fill, not boolean indexing: no host sync, and the -inf self terms never meet a product.
    return -(log_prob.masked_fill(~positives, 0.0).sum(1) / (v - 1)).mean()


def nearest_prototypes(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """For each feature row, the source prototype with the largest cosine similarity."""
    similarity = F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T
    return prototypes[similarity.argmax(1)]


@register_method("rmt")
class RMT(Method):
    """Robust mean teacher: SCE to an EMA teacher, contrastive alignment to source prototypes, source replay.

    Paper: Döbler et al., "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation"
    (CVPR 2023). Official code: mariodoebler/test-time-adaptation (`classification/methods/rmt.py`,
    `conf.py`, `cfgs/*/rmt.yaml`). All weights and biases train (BN with batch statistics); the teacher
    is a copy updated by EMA 0.999 after every step. Loss = lambda_ce_trg * mean(0.5 SCE(student(x),
    teacher(x)) + 0.5 SCE(student(aug(x)), teacher(x))) + lambda_cont * contrastive + lambda_ce_src *
    CE(student(x_src), y_src), all lambdas 1. aug = the CoTTA transform (edge padding, blur and noise).
    Contrastive: views [nearest source prototype (cosine), feature of x, feature of aug(x)] through a
    projector Linear(d,128)-ReLU-Linear(128,128) trained with the model (same optimizer and lr),
    temperature 0.1. Output = student + teacher logits of the forward before the update.

    Preparation (cached): class prototypes = per-class mean of the un-normalised penultimate features
    of up to 100,000 source images (shuffled batches of source_batch_size, the configured model with
    batch-statistics BN, before the warm-up); then the warm-up: warmup_samples // source_batch_size
    steps on unlabelled source batches, loss SCE(student, teacher), the lr ramped linearly
    lr * (i+1)/steps, the teacher EMA-updated after each step, the optimizer state kept (reset returns
    to the post-warm-up state, as the official code). Source replay at test time continues the shuffled
    source epochs. CIFAR: Adam 1e-3, batch 200; ImageNet: SGD 0.01 momentum 0.9 nesterov, batch 64.

    Deviations: the source set is what the benchmark's clean train split provides (ImageNet: at most
    5,000 images held in memory, not the full train set); replay starts a fresh shuffled epoch after
    set-up (the official loader iterator continues the warm-up's epoch unless the warm-up checkpoint is
    loaded); its position is part of the state, so reset returns to it; the projector's random init is not part of the cached
    preparation (the warm-up does not change it). Source batches are drawn on the device.
    """

    Hparams = RMTHparams
    PRESETS = {"cifar": CIFAR, "imagenet": IMAGENET}
    needs_source = True
    state_modules = ("teacher", "projector")  # the prototypes never change after set-up

    def configure_model(self) -> None:
        """Eval mode with batch-statistics BN, every weight trainable; teacher copy and projector."""
        self.model.eval().requires_grad_(True)
        use_batch_statistics(self.model)
        self.teacher = make_teacher(self.model)
        device = next(self.model.parameters()).device
        dim, proj = classifier_of(self.model).in_features, self.hparams.projection_dim
        self.projector = nn.Sequential(nn.Linear(dim, proj), nn.ReLU(), nn.Linear(proj, proj)).to(device)
        self.augment = CoTTAAugment(COTTA)
        self.prototypes: torch.Tensor | None = None
        self.source: ShuffledSource | None = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every weight and bias of the model (as the official collect_params), then the projector's."""
        return [p for _, p in restorable_parameters(self.model)] + list(self.projector.parameters())

    # -- adaptation ------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student + teacher logits, total loss) of one batch."""
        if self.prototypes is None:
            raise RuntimeError(f"{self.name} needs its preparation step (source prototypes) before adapting")
        hp = self.hparams
        features, logits = features_and_logits(self.model, x)
        features_aug, logits_aug = features_and_logits(self.model, self.augment(x))
        with torch.no_grad():
            logits_teacher = self.teacher(x)
            anchors = nearest_prototypes(features, self.prototypes)
        views = torch.stack([anchors, features, features_aug], dim=1)
        self_training = (0.5 * symmetric_cross_entropy(logits, logits_teacher)
                         + 0.5 * symmetric_cross_entropy(logits_aug, logits_teacher)).mean()
        loss = hp.lambda_ce_trg * self_training + hp.lambda_cont * contrastive_loss(views, self.projector, hp.temperature)
        if hp.lambda_ce_src > 0:
            if self.source is None:
                raise RuntimeError(f"{self.name} replays source data: call attach_source(source) first")
            x_src, y_src = self.source.next()
            loss = loss + hp.lambda_ce_src * F.cross_entropy(self.model(x_src), y_src)
        return (logits + logits_teacher).detach(), loss

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Loss, one optimizer step, teacher EMA; returns the pre-update student + teacher logits."""
        for _ in range(self.hparams.steps):
            outputs, loss = self.loss(x)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            ema_update(self.teacher, self.model, self.hparams.teacher_momentum)
        return outputs

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Student + teacher logits without an update."""
        return self.model(x) + self.teacher(x)

    def state_dict(self) -> dict[str, Any]:
        """The base state (model, optimizer, teacher, projector) and the source replay position."""
        return {**super().state_dict(), "replay": None if self.source is None else self.source.position()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`."""
        super().load_state_dict(state)
        if self.source is not None and state["replay"] is not None:
            self.source.seek(state["replay"])

    # -- preparation on source data ----------------------------------------------------------------
    def attach_source(self, source: Any) -> None:
        """Keep the labelled source data on the device for replay (only when lambda_ce_src > 0)."""
        if self.hparams.lambda_ce_src > 0:
            self.source = ShuffledSource(source, self.hparams.source_batch_size, self._device())

    def compute_preparation(self, source: Any, progress: bool = True) -> dict[str, torch.Tensor]:
        """Source prototypes, then (if warmup_samples // source_batch_size > 0) the warmed-up state."""
        stream = ShuffledSource(source, self.hparams.source_batch_size, self._device())
        out = {"prototypes": self.source_prototypes(stream, progress)}
        steps = self.hparams.warmup_samples // self.hparams.source_batch_size
        if steps > 0:
            self.warm_up(stream, steps, progress)
            out.update({f"model/{k}": v for k, v in self.model.state_dict().items()})
            out.update({f"teacher/{k}": v for k, v in self.teacher.state_dict().items()})
            out.update(optimizer_tensors(self.optimizer))
        return {k: v.detach().clone() for k, v in out.items()}

    def load_preparation(self, artefacts: dict[str, torch.Tensor]) -> None:
        """Install the prototypes and, if there was a warm-up, the warmed-up student, teacher and optimizer."""
        device = self._device()
        self.prototypes = artefacts["prototypes"].to(device)
        if any(k.startswith("model/") for k in artefacts):
            for prefix, module in (("model/", self.model), ("teacher/", self.teacher)):
                module.load_state_dict({k[len(prefix):]: v for k, v in artefacts.items() if k.startswith(prefix)})
            load_optimizer_tensors(self.optimizer, artefacts)

    @torch.no_grad()
    def source_prototypes(self, stream: ShuffledSource, progress: bool = True) -> torch.Tensor:
        """(C, d) per-class means of penultimate features, stopping once more than prototype_samples are seen."""
        num_classes = classifier_of(self.model).out_features
        sums = counts = None
        seen = 0
        for x, y in progress_bar(progress, iterable=stream.epoch(), desc=f"{self.name}: prototypes",
                                 total=-(-len(stream) // stream.batch_size)):
            features, _ = features_and_logits(self.model, x)
            if sums is None:
                sums = features.new_zeros(num_classes, features.shape[1])
                counts = features.new_zeros(num_classes)
            sums.index_add_(0, y, features)
            counts += torch.bincount(y, minlength=num_classes).to(counts.dtype)
            seen += len(y)
            if seen > self.hparams.prototype_samples:  # the official loop's break condition
                break
        if bool((counts == 0).any()):  # one check at set-up: the official code would give NaN prototypes
            raise ValueError(f"{self.name}: the source data lacks classes {torch.nonzero(counts == 0).flatten().tolist()}")
        return sums / counts[:, None]

    @torch.enable_grad()
    def warm_up(self, stream: ShuffledSource, steps: int, progress: bool = True) -> None:
        """Mean-teacher warm-up on unlabelled source batches with a linear lr ramp (official `warmup`)."""
        final_lr = self.hparams.lr
        for i in progress_bar(progress, iterable=range(steps), desc=f"{self.name}: warm-up"):
            for group in self.optimizer.param_groups:
                group["lr"] = final_lr * (i + 1) / steps
            x, _ = stream.next()
            with torch.no_grad():
                logits_teacher = self.teacher(x)
            symmetric_cross_entropy(self.model(x), logits_teacher).mean().backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            ema_update(self.teacher, self.model, self.hparams.teacher_momentum)
        for group in self.optimizer.param_groups:
            group["lr"] = final_lr

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device


@register_method("rmt_source_free")
class RMTSourceFree(RMT):
    """RMT without source training: no warm-up and no source replay (lambda_ce_src 0, warmup_samples 0).

    As the official harness's documented source-free option (`RMT.LAMBDA_CE_SRC 0.0
    RMT.NUM_SAMPLES_WARM_UP 0`, scripts/run.sh). Like the official code it still computes the class
    prototypes from source features at set-up (a preparation step that needs the clean source data,
    but no labels beyond the class means and no training on source); it is source-free only in that
    nothing is trained on, or replayed from, source data.
    """

    PRESETS = {family: {**preset, "lambda_ce_src": 0.0, "warmup_samples": 0}
               for family, preset in (("cifar", CIFAR), ("imagenet", IMAGENET))}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat tensors `optimizer/<index>/<key>` (for the cache)."""
    return {f"optimizer/{i}/{key}": torch.as_tensor(value)
            for i, state in optimizer.state_dict()["state"].items()
            for key, value in state.items() if value is not None}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, artefacts: dict[str, torch.Tensor]) -> None:
    """Install the per-parameter state written by `optimizer_tensors` (param groups stay as configured)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in artefacts.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/")
            state.setdefault(int(index), {})[name] = value.clone()
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)
