"""GPU training in the style of airbench: the whole uint8 data set lives on the device, and each batch is
cropped, flipped and standardized there with a few batched tensor operations (no DataLoader, no per-image
Python). SGD with constant Nesterov momentum, weight decay (the paper's L2), a one-cycle learning rate, label
smoothing, alternating flips and, where the recipe asks, a moving average of the weights. Seeded: on the CPU a run,
and a run interrupted and resumed, give identical weights.

`train` takes a `TrainRequest` (every option checked when it is made) and reads top to bottom: the run (held-out
split, preprocessing, model, optimizer, weight average, device batches) -> resume -> untimed warm-up -> for each
epoch: the steps -> evaluation and best.pt when due -> checkpoint and log. Nothing in the steps waits for the GPU:
losses stay on the device until the epoch ends, where they are read once (and checked for divergence). Its pieces
(`Run`, `DeviceBatches`, `make_optimizer`, `WeightAverage`, `warm_up`, `checkpoint_record`, `restore`) are small
of their own.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgecls.artifacts import atomic_write, check_output_folder, library_versions, output_folder
from edgecls.checkpoint import load_checkpoint, save_checkpoint, validation_record
from edgecls.data import Cifar10, check_seed, default_val_split, seeded_subset
from edgecls.defaults import CHECKPOINT_DIR, CROP_SIZE, MIN_FITTED_BATCH, MIN_STEPS_PER_EPOCH
from edgecls.device import backend_flags, gpu_name, normalize_on_device, on_device, pick_device, synchronize
from edgecls.errors import EdgeclsError
from edgecls.evaluate import torch_logits
from edgecls.formats import ModelFiles
from edgecls.metrics import accuracy
from edgecls.models import create_model
from edgecls.preprocess import Preprocessing
from edgecls.progress import progress_bar
from edgecls.recipes import DEFAULT_RECIPE, Recipe, training_plan

# Untimed training steps before epoch 1, on throwaway copies: cuDNN/cuBLAS handles, cuDNN's algorithm search and
# lazy kernel loading happen there. One step is enough on the CPU, which has none of these.
WARMUP_STEPS = {"cuda": 3, "cpu": 1}


@dataclass
class EpochLog:
    epoch: int
    loss: float
    lr: float
    seconds: float
    images_per_second: float
    test_accuracy: float | None = None
    val_accuracy: float | None = None  # on the held-out training images (--val-split), when measured


@dataclass
class TrainResult:
    checkpoint: Path
    best_checkpoint: Path | None
    test_accuracy: float
    val_accuracy: float | None
    train_seconds: float  # time in the training steps only: no warm-up, evaluation or checkpoint writing
    images_per_second: float
    history: list[EpochLog]
    warmup_seconds: float = 0.0  # the untimed warm-up before the first epoch of this call
    # With a weight average (the model saved), the test accuracy of the last training weights themselves.
    live_test_accuracy: float | None = None


def dataset_preprocessing(data: Cifar10) -> Preprocessing:
    """Per-channel mean and std of the training images: decided once here, then travel with the model."""
    pixels = data.train_images.reshape(-1, 3)
    mean = pixels.mean(axis=0, dtype=np.float64) / 255
    squares = np.zeros(3)
    for start in range(0, len(pixels), 1_000_000):  # in chunks: float64 copies of all 51M pixels would take 1.2 GB
        squares += ((pixels[start : start + 1_000_000] / 255.0 - mean) ** 2).sum(axis=0)
    std = np.sqrt(squares / len(pixels))
    return Preprocessing(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                         class_names=tuple(data.class_names), input_size=data.train_images.shape[1], crop_size=CROP_SIZE)


def random_crop_flip(images: torch.Tensor, size: int, generator: torch.Generator,
                     flip: torch.Tensor | None = None) -> torch.Tensor:
    """A random size x size crop of each uint8 N x C x H x W image, mirrored where `flip` (bool, N) is true, or with
    probability 1/2 when it is None; in two gathers."""
    n, c, height, width = images.shape
    device = images.device
    top = torch.randint(0, height - size + 1, (n, 1), device=device, generator=generator)
    left = torch.randint(0, width - size + 1, (n, 1), device=device, generator=generator)
    if flip is None:
        flip = torch.randint(0, 2, (n,), device=device, generator=generator).bool()
    steps = torch.arange(size, device=device)
    rows = top + steps
    cols = left + torch.where(flip.view(n, 1), size - 1 - steps, steps)
    images = images.gather(2, rows[:, None, :, None].expand(n, c, size, width))
    return images.gather(3, cols[:, None, None, :].expand(n, c, size, size))


class DeviceBatches:
    """The training split resident on the device; each epoch yields standardized, augmented batches made there."""

    def __init__(self, data: Cifar10, preprocess: Preprocessing, plan: Recipe, device: torch.device,
                 generator: torch.Generator, seed: int) -> None:
        self.device = device
        self.images = torch.from_numpy(data.train_images).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(data.train_labels).to(device)
        self.mean = torch.tensor(preprocess.mean, device=device, dtype=torch.float32)
        self.std = torch.tensor(preprocess.std, device=device, dtype=torch.float32)
        self.batch_size, self.crop_size, self.generator = plan.batch_size, preprocess.crop_size, generator
        self.crops_per_image = plan.crops_per_image
        self.channels_last = device.type == "cuda"
        self.samples = len(self.images) * plan.crops_per_image
        self.steps = self.samples // plan.batch_size
        if self.steps == 0:
            raise EdgeclsError(f"batch size {plan.batch_size} exceeds the {self.samples} training samples; "
                               "use a smaller --batch-size")
        # Alternating flips: a seeded coin toss per image decides its side the first time it is drawn; after that
        # it changes side at each drawing. A function of the seed alone, so a resumed run needs no state for it.
        self.first_flips = None
        if plan.flip == "alternate":
            tosses = torch.Generator().manual_seed(seed)
            self.first_flips = (torch.rand(len(self.images), generator=tosses) < 0.5).to(device)

    def epoch(self, number: int, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch `number` (0-based), drawn with `generator` (default: the training's own)."""
        generator = generator or self.generator
        count = len(self.images)
        order = torch.randperm(self.samples, device=self.device, generator=generator)
        for step in range(self.steps):
            samples = order[step * self.batch_size : (step + 1) * self.batch_size]
            index = samples % count
            flip = None
            if self.first_flips is not None:  # the how-many-th drawing of each image this is, counted over the run
                drawing = number * self.crops_per_image + samples // count
                flip = self.first_flips[index] ^ (drawing % 2 == 1)
            batch = random_crop_flip(self.images[index], self.crop_size, generator, flip)
            batch = normalize_on_device(batch, self.mean, self.std)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            yield batch, self.labels[index]


def make_optimizer(model: nn.Module, plan: Recipe, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with Nesterov momentum (weight decay on weights only, not on batch-norm parameters and biases) and its
    one-cycle learning-rate schedule over `steps` steps. The momentum stays at `plan.momentum` throughout:
    OneCycleLR would otherwise cycle it between 0.95 and 0.85 and ignore the recipe's value."""
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if param.ndim > 1 else no_decay).append(param)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": plan.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=plan.lr, momentum=plan.momentum, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=plan.lr, total_steps=steps, pct_start=plan.warmup, anneal_strategy="linear",
        cycle_momentum=False, div_factor=10.0, final_div_factor=100.0)
    return optimizer, scheduler


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics, kept in a copy of the model
    and updated on the device after every step (no host sync). Its time constant is `fraction` of `total_steps`."""

    def __init__(self, model: nn.Module, fraction: float, total_steps: int) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.weight = 1 - math.exp(-1 / (fraction * total_steps))  # how far each step moves toward the weights
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self._averaged = [mine for mine, theirs in pairs if mine.is_floating_point()]
        self._live = [theirs for mine, theirs in pairs if mine.is_floating_point()]
        # batch norm's num_batches_tracked: copied, not averaged
        self._counted = [mine for mine, theirs in pairs if not mine.is_floating_point()]
        self._counts = [theirs for mine, theirs in pairs if not mine.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._averaged, self._live, self.weight)
        torch._foreach_copy_(self._counted, self._counts)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, images: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
    """One optimizer step (bf16 autocast on CUDA); returns the loss, still on the device."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
        loss = loss_fn(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def warm_up(model: nn.Module, plan: Recipe, batches: DeviceBatches, loss_fn: nn.Module, steps: int) -> float:
    """Run `steps` training steps on throwaway copies of the model and optimizer, with batches of a generator of
    its own, and wait for them; the model, the training's generator and the RNG states are left exactly as they
    were. Returns the seconds it took (not training time)."""
    device = batches.device
    started = time.perf_counter()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    scratch = copy.deepcopy(model).train()
    optimizer, _ = make_optimizer(scratch, plan, max(steps, 2))
    average = WeightAverage(scratch, plan.ema, plan.epochs * batches.steps) if plan.ema else None
    throwaway = torch.Generator(device=device).manual_seed(0)
    for _, (images, labels) in zip(range(steps), batches.epoch(0, throwaway)):
        training_step(scratch, optimizer, loss_fn, images, labels)
        if average:
            average.update()
    synchronize(device)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    return time.perf_counter() - started


def epoch_loss(losses: torch.Tensor, model: nn.Module, epoch: int, plan: Recipe, last_path: Path,
               written: bool) -> float:
    """The epoch's mean loss, read from the device in one transfer (with the weights' check, the epoch's only reads
    from the GPU); an EdgeclsError naming the first non-finite loss, or non-finite weights, so no diverged model is
    saved."""
    values = losses.cpu().numpy()
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad) == 0 and weights_finite(model):
        return float(values.mean())
    where = (f"the loss became {values[bad[0]]} at epoch {epoch}, step {bad[0] + 1} of {len(values)}" if len(bad)
             else f"the weights became non-finite in epoch {epoch}")
    kept = (f"{last_path} holds the last good epoch ({epoch - 1})" if written
            else f"{last_path} was left as it was" if last_path.exists() else "no checkpoint was written")
    raise EdgeclsError(f"training diverged: {where}; {kept}; use a smaller learning rate (--lr, this run's peak "
                       f"was {plan.lr:g})")


def weights_finite(model: nn.Module) -> bool:
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def to_cpu(value: Any) -> Any:
    """`value` with every tensor in it (at any depth of dicts, lists and tuples) copied to the CPU: a checkpoint
    must load on a machine without the GPU it was trained on."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)  # a copy on the CPU too: the snapshot must not follow training
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


def check_val_split(size: int, total: int) -> None:
    if not 0 <= size < total:
        raise EdgeclsError(f"--val-split {size} must be at least 0 and smaller than the {total:,} training images; "
                           "pass a smaller --val-split (0: no validation split)")


class CheckpointPaths(NamedTuple):
    last: Path
    best: Path
    log: Path


def checkpoint_paths(out_dir: str | os.PathLike, model_name: str) -> CheckpointPaths:
    last = Path(out_dir) / f"{model_name}.pt"
    return CheckpointPaths(last, last.with_name(f"{model_name}.best.pt"), ModelFiles.training_log(last, model_name))


@dataclass(frozen=True)
class TrainRequest:
    """One training run, asked for: `edgecls train` builds it from its options, `train` takes it. Every option is
    checked once, when the request is made, before any data is read; only the validation split's size waits for
    the data (`for_data`).

    `val_split` training images (seeded) are held out: training never sees them, and `eval_every` picks best.pt by
    accuracy on them; the test split is only reported. With `val_split=0`, best.pt is picked on the test split;
    None (the default): `default_val_split` of the data, 10% of its training images, at most 5,000 (CIFAR-10's 5,000).
    `cudnn_benchmark`: let cuDNN time its algorithms for the (fixed) batch shape, on CUDA.
    """

    model_name: str
    recipe: str = DEFAULT_RECIPE
    epochs: int | None = None  # None: the recipe's (and likewise batch_size and lr)
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    val_split: int | None = None
    device: str | None = None  # None: CUDA when available, else the CPU
    out_dir: Path = Path(CHECKPOINT_DIR)
    eval_every: int = 0
    resume: bool = False
    progress: bool = True
    cudnn_benchmark: bool = True
    plan: Recipe = field(init=False, repr=False)  # the recipe with the overrides
    torch_device: torch.device = field(init=False, repr=False)

    def __post_init__(self) -> None:
        create_model(self.model_name)  # an unknown name fails before any file is read or written
        object.__setattr__(self, "plan", training_plan(self.recipe, self.epochs, self.batch_size, self.lr))
        check_seed(self.seed, "--seed")
        if self.eval_every < 0:
            raise EdgeclsError(f"--eval-every {self.eval_every} is negative; use a whole number from 0 up")
        object.__setattr__(self, "out_dir", check_output_folder(self.out_dir))
        object.__setattr__(self, "torch_device", pick_device(self.device))

    def for_data(self, data: Cifar10) -> TrainRequest:
        """This request decided for `data` (known only once the data is read): the validation split where none was
        asked for (`default_val_split`), refused when the data cannot give it; and, where no batch size was asked for
        and the data is small, the recipe's batch halved until an epoch has MIN_STEPS_PER_EPOCH steps (the learning
        rate scaled with it, as --batch-size does): 1,024 would leave a set of 1,500 photos one step an epoch."""
        total = len(data.train_images)
        size = default_val_split(total) if self.val_split is None else self.val_split
        check_val_split(size, total)
        batch = self.batch_size
        if batch is None:
            samples, batch = (total - size) * self.plan.crops_per_image, self.plan.batch_size
            while batch // 2 >= MIN_FITTED_BATCH and samples // batch < MIN_STEPS_PER_EPOCH:
                batch //= 2
            batch = None if batch == self.plan.batch_size else batch
        if (size, batch) == (self.val_split, self.batch_size):
            return self
        return replace(self, val_split=size, batch_size=batch)

    @property
    def paths(self) -> CheckpointPaths:
        return checkpoint_paths(self.out_dir, self.model_name)

    def train_args(self) -> dict[str, Any]:
        """The settings a checkpoint records, and that a resumed run must repeat."""
        return {"model": self.model_name, "recipe": self.recipe, **asdict(self.plan), "seed": self.seed,
                "val_split": self.val_split, "device": self.torch_device.type}


@dataclass
class HeldOut:
    """The data split for one run: what it trains on, and the validation images it never sees."""

    training: Cifar10
    images: np.ndarray
    labels: np.ndarray
    record: dict[str, Any] | None  # the checkpoint's `validation` field

    @classmethod
    def split(cls, data: Cifar10, size: int, seed: int) -> HeldOut:
        """Hold `size` seeded training images out of training."""
        check_val_split(size, len(data.train_images))
        held_out = seeded_subset(len(data.train_images), size, seed) if size else np.empty(0, dtype=np.int64)
        rest, images, labels = data.hold_out(held_out)
        return cls(rest, images, labels, validation_record(seed, images) if size else None)


class Run:
    """What one training run holds on its device: the data and its preprocessing, the model, its optimizer and
    schedule, the weight average, the batches, and the history so far."""

    def __init__(self, request: TrainRequest, data: Cifar10) -> None:
        self.request, self.data, self.plan, self.device = request, data, request.plan, request.torch_device
        self.split = HeldOut.split(data, request.val_split, request.seed)
        self.preprocess = dataset_preprocessing(self.split.training)
        torch.manual_seed(request.seed)
        model = create_model(request.model_name, num_classes=len(data.class_names)).to(self.device)
        if self.device.type == "cuda":  # before the optimizer is made, so that it holds the parameters in their final layout
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.generator = torch.Generator(device=self.device).manual_seed(request.seed)
        self.batches = DeviceBatches(self.split.training, self.preprocess, self.plan, self.device, self.generator,
                                     request.seed)
        total_steps = self.plan.epochs * self.batches.steps
        self.optimizer, self.scheduler = make_optimizer(model, self.plan, total_steps)
        self.average = WeightAverage(model, self.plan.ema, total_steps) if self.plan.ema else None
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.plan.label_smoothing)
        self.start_epoch, self.best_accuracy, self.history = 0, -1.0, []
        self.resume_state: dict[str, Any] | None = None

    @property
    def saved_model(self) -> nn.Module:
        """The model that is evaluated and saved: the weight average where the recipe keeps one."""
        return self.average.model if self.average else self.model

    def restore(self) -> None:
        """Continue an interrupted run from its last checkpoint."""
        self.start_epoch, self.best_accuracy, self.history = restore(
            self.request.paths.last, self.request.train_args(), self.data.fingerprint, self.model, self.average,
            self.optimizer, self.scheduler, self.generator)
        # A run killed between its checkpoint and its log left the log behind: the checkpoint's history is the truth
        write_log(self.request.paths.log, self.history)

    def train_epoch(self, epoch: int, bar: tqdm) -> EpochLog:
        """One epoch of steps (0-based `epoch`), timed; its losses are read from the device once, at the end."""
        model, dev, written = self.model, self.device, epoch > self.start_epoch or self.request.resume
        model.train()
        losses = torch.zeros(self.batches.steps, device=dev)
        synchronize(dev)
        started = time.perf_counter()
        for step, (images, labels) in enumerate(self.batches.epoch(epoch)):
            losses[step] = training_step(model, self.optimizer, self.loss_fn, images, labels)
            lr_used = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            if self.average:
                self.average.update()
            bar.update(1)
        synchronize(dev)
        seconds = time.perf_counter() - started
        loss = epoch_loss(losses, model, epoch + 1, self.plan, self.request.paths.last, written=written)
        entry = EpochLog(epoch + 1, loss, float(lr_used), round(seconds, 3),
                         round(self.batches.steps * self.plan.batch_size / seconds, 1))
        bar.set_postfix(epoch=f"{epoch + 1}/{self.plan.epochs}", loss=f"{loss:.3f}", lr=f"{lr_used:.3g}",
                        img_s=f"{entry.images_per_second:,.0f}")
        return entry

    def evaluation_due(self, epoch: int) -> bool:
        every = self.request.eval_every
        return bool(every) and (epoch % every == 0 or epoch == self.plan.epochs)

    def evaluate(self, entry: EpochLog) -> None:
        """Fill in the epoch's test accuracy and, when there is a validation split, its validation accuracy."""
        measure_accuracies(entry, self.saved_model, self.data, self.split.images, self.split.labels, self.preprocess,
                           self.device)

    def keep_if_best(self, entry: EpochLog) -> None:
        """Write best.pt when this epoch beats the best so far (on the validation split, else the test split)."""
        chosen_by = entry.test_accuracy if entry.val_accuracy is None else entry.val_accuracy
        if chosen_by > self.best_accuracy:
            self.best_accuracy = chosen_by
            save_checkpoint(self.request.paths.best, checkpoint_record(self, entry))

    def save(self, entry: EpochLog) -> None:
        """The last checkpoint, with what resuming needs, and the log: both always describe the same epoch."""
        state = checkpoint_record(self, entry)
        state["resume"] = self.resume_state = {
            "optimizer": to_cpu(self.optimizer.state_dict()), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "live_state_dict": to_cpu(self.model.state_dict()) if self.average else None,
            "best_accuracy": self.best_accuracy, "history": [asdict(h) for h in self.history]}
        save_checkpoint(self.request.paths.last, state)
        write_log(self.request.paths.log, self.history)

    def finish(self) -> EpochLog:
        """The last epoch, measured if it was not: then the last checkpoint again, now with the final accuracies."""
        final = self.history[-1]
        if final.test_accuracy is None:
            self.evaluate(final)
            state = checkpoint_record(self, final)
            state["resume"] = self.resume_state
            save_checkpoint(self.request.paths.last, state)
            write_log(self.request.paths.log, self.history)
        return final

    def live_accuracy(self) -> float | None:
        """With a weight average, the test accuracy of the last training weights themselves."""
        if not self.average:
            return None
        logits = torch_logits(self.model, self.data.test_images, self.preprocess, batch_size=1000, device=self.device)
        return accuracy(logits, self.data.test_labels)


def checkpoint_record(run: Run, entry: EpochLog) -> dict[str, Any]:
    """The fields of a checkpoint at the end of `entry`'s epoch (docs/FORMATS.md), weights copied to the CPU; the
    fingerprint of the run's whole data set names what the model was trained on."""
    data, request = run.data, run.request
    return {
        "model": request.model_name, "model_config": {"num_classes": len(data.class_names)},
        "state_dict": to_cpu(run.saved_model.state_dict()),
        "preprocess": run.preprocess.to_dict(), "epoch": entry.epoch, "epochs": run.plan.epochs,
        "test_accuracy": entry.test_accuracy, "val_accuracy": entry.val_accuracy,
        "data_fingerprint": data.fingerprint, "validation": run.split.record, "train_args": request.train_args(),
        "versions": library_versions("torch", "numpy"), "device": gpu_name(run.device), "data": data.summary(),
    }


def train(request: TrainRequest, data: Cifar10,
          on_epoch_end: Callable[[EpochLog], None] | None = None) -> TrainResult:
    """Train as `request` asks on `data` and write <out>/<model>.pt (last), its log and, with eval_every,
    <model>.best.pt. `on_epoch_end` is called with each epoch's log entry, after its checkpoint is written."""
    request = request.for_data(data)
    dev, plan = request.torch_device, request.plan
    with output_folder(request.out_dir), on_device(dev), \
            backend_flags(cudnn_benchmark=request.cudnn_benchmark and dev.type == "cuda"):
        run = Run(request, data)
        if request.resume:
            run.restore()
        if dev.type != "cuda" and request.progress:
            tqdm.write("edgecls: no CUDA GPU found: training on the CPU, which is slow (use a GPU for full runs)")
        warmup_seconds = warm_up(run.model, plan, run.batches, run.loss_fn, WARMUP_STEPS[dev.type])

        with progress_bar(total=plan.epochs * run.batches.steps, initial=run.start_epoch * run.batches.steps,
                          unit="step", disable=not request.progress, dynamic_ncols=True,
                          desc=f"{request.model_name} {dev.type}") as bar:
            for epoch in range(run.start_epoch, plan.epochs):
                entry = run.train_epoch(epoch, bar)
                if run.evaluation_due(entry.epoch):
                    run.evaluate(entry)
                    run.keep_if_best(entry)
                    bar.write(f"epoch {entry.epoch}: " + _accuracies_text(entry))
                run.history.append(entry)
                run.save(entry)
                if on_epoch_end:
                    on_epoch_end(entry)
        final = run.finish()
        live_accuracy = run.live_accuracy()
    history = run.history
    train_seconds = sum(h.seconds for h in history)
    images_seen = sum(h.images_per_second * h.seconds for h in history)
    return TrainResult(request.paths.last, request.paths.best if request.eval_every else None, final.test_accuracy,
                       final.val_accuracy, train_seconds, images_seen / max(train_seconds, 1e-9), history,
                       warmup_seconds, live_accuracy)


def write_log(path: Path, history: list[EpochLog]) -> None:
    """One JSON line per epoch, rewritten whole, so it always matches the checkpoint."""
    with atomic_write(path, "w") as log:
        log.writelines(json.dumps(asdict(h)) + "\n" for h in history)


def measure_accuracies(entry: EpochLog, model: nn.Module, data: Cifar10, val_images: np.ndarray,
                       val_labels: np.ndarray, preprocess: Preprocessing, device: torch.device) -> None:
    """Fill in the epoch's test accuracy and, when there is a validation split, its validation accuracy."""
    def accuracy_on(images: np.ndarray, labels: np.ndarray) -> float:
        return accuracy(torch_logits(model, images, preprocess, batch_size=1000, device=device), labels)

    entry.test_accuracy = accuracy_on(data.test_images, data.test_labels)
    entry.val_accuracy = accuracy_on(val_images, val_labels) if len(val_labels) else None


def _accuracies_text(entry: EpochLog) -> str:
    text = f"test accuracy {entry.test_accuracy:.2f}%"
    return text if entry.val_accuracy is None else f"validation accuracy {entry.val_accuracy:.2f}%, {text}"


def restore(path: Path, train_args: dict[str, Any], fingerprint: str, model: nn.Module,
            average: WeightAverage | None, optimizer: torch.optim.Optimizer, scheduler: Any,
            generator: torch.Generator) -> tuple[int, float, list[EpochLog]]:
    """Load the state of an interrupted run; refuse when it was a different run."""
    if not path.exists():
        raise EdgeclsError(f"--resume: no checkpoint at {path} to resume from; start without --resume")
    saved = load_checkpoint(path)
    if saved.resume is None:
        raise EdgeclsError(f"--resume: {path} holds no resume state; start without --resume")
    trained_on = saved.train_args.get("device")
    if trained_on != train_args["device"]:  # its random-number states only fit a generator of that device type
        raise EdgeclsError(f"--resume: {path} was trained on {trained_on or 'another device'}, this run is on "
                           f"{train_args['device']}; resume on the same kind of device (--device) or start "
                           "without --resume")
    if saved.train_args != train_args:
        changed = sorted(k for k in train_args if saved.train_args.get(k) != train_args[k])
        raise EdgeclsError(f"--resume: {path} was trained with other settings ({', '.join(changed)}); "
                           "pass the same options or start without --resume")
    if saved.data_fingerprint != fingerprint:
        raise EdgeclsError(f"--resume: {path} was trained on other data (fingerprint {saved.data_fingerprint}); "
                           "pass the same --data or start without --resume")
    if saved.epoch >= saved.epochs:
        raise EdgeclsError(f"--resume: {path} has already finished all {saved.epochs} epochs")
    state = saved.resume
    model.load_state_dict(state["live_state_dict"] if average else saved.state_dict)
    if average:
        average.model.load_state_dict(saved.state_dict)
    optimizer.load_state_dict(state["optimizer"])  # moves the momentum buffers to the parameters' device
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], next(model.parameters()).device)
    history = [EpochLog(**h) for h in state["history"]]
    return saved.epoch, float(state["best_accuracy"]), history
