"""STFPM training: cached teacher features, SGD on the student, best-validation checkpoint, calibration.

The teacher is frozen and there is no augmentation, so each image's teacher features are computed once
and kept (float16) for all epochs; only the student runs forward and backward. The checkpoint is the
epoch with the lowest loss on held-out good images (never test labels), calibrated on those images.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linewatch.common.images import ImageRecord, load_rgb
from linewatch.detector.model.calibrate import Calibration, calibrate, f1_optimal_threshold
from linewatch.detector.model.checkpoint import save_checkpoint
from linewatch.detector.model.device import select_device
from linewatch.detector.model.metadata import ModelMetadata
from linewatch.detector.model.stfpm.backbones import get_spec, load_pretrained
from linewatch.detector.model.stfpm.loss import stfpm_loss
from linewatch.detector.model.stfpm.torch_model import STFPM
from linewatch.detector.model.tiling import TILINGS, merge_tiles, tiles_of_images
from linewatch.errors import InvalidDataError, InvalidValueError

LR_SCHEDULES = ("constant", "cosine")
# Early stopping waits at least this many student updates without a better validation loss: an epoch of a 26-image
# set is two updates, and three epochs stopped the coarse student at epoch 4 of 20 on a paper-web set while its
# validation loss fell from 2.10 to 1.27 by epoch 19 (benchmarks/results/model_accuracy.md, run E)
MIN_PATIENCE_UPDATES = 100


@dataclass
class TrainConfig:
    """Training settings (defaults: see the results in benchmarks/results/model_accuracy.md)."""

    backbone: str = "efficientnet_lite0"
    # 192 px with lite0 taps 2/4/10 (a 48x48-cell map), up to 20 epochs with early stopping, lr 0.4 (the paper's):
    # chosen on the dev halves (docs/decisions/0002-default-recipe-and-auto-selection.md,
    # docs/decisions/0008-training-schedule-defaults.md).
    image_size: int = 192
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.4
    # "constant" (the paper's) or "cosine" (warm-up over the first epoch, then decay to zero at ``epochs``);
    # why constant: docs/decisions/0008-training-schedule-defaults.md.
    lr_schedule: str = "constant"
    # Recompute the student's batch-norm statistics over the training images before each validation (and so in
    # the saved model); off by default: docs/decisions/0008-training-schedule-defaults.md.
    refresh_bn_stats: bool = False
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2
    target_false_alarm_rate: float = 0.01
    pixel_false_positive_rate: float = 0.001
    teacher_weights: Path | None = None
    taps: tuple[int, ...] | None = None
    sigma: float = 0.0
    resize_mode: str = "squash"
    score_top_k: int = 1
    # exponents of the tapped layers' maps in the fused product (None: all 1, the paper's product)
    tap_weights: tuple[float, ...] | None = None
    # the taps whose product is the map shown, and those whose product the image score is read from (None: every
    # tap, and the map shown); the student learns every tap either way (detector/model/training/recipes.py, "coarse")
    map_taps: tuple[int, ...] | None = None
    score_taps: tuple[int, ...] | None = None
    device: str | None = "auto"
    # None = bf16 only where the hardware does it natively (CUDA, AVX-512 BF16/AMX):
    # docs/decisions/0008-training-schedule-defaults.md.
    bf16: bool | None = None
    channels_last: bool = True
    # stop when the validation loss has not improved for this many epochs (0 = run every epoch), and for at least
    # ``MIN_PATIENCE_UPDATES`` student updates (patience_epochs)
    patience: int = 3
    # "long-axis": long images are cut into overlapping square tiles (detector/model/tiling.py); each tile of a good
    # image is a training sample, and calibration scores each held-out image as the max over its tiles
    tiling: str = "none"

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.tiling not in TILINGS:
            raise ValueError(f"tiling must be one of {TILINGS}, got {self.tiling!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (paths as strings)."""
        data = asdict(self)
        data["teacher_weights"] = str(self.teacher_weights) if self.teacher_weights else None
        data["taps"] = list(self.taps) if self.taps else None
        data["tap_weights"] = list(self.tap_weights) if self.tap_weights else None
        data["map_taps"] = list(self.map_taps) if self.map_taps else None
        data["score_taps"] = list(self.score_taps) if self.score_taps else None
        return data


@dataclass
class TrainResult:
    """What training produced."""

    path: Path
    best_epoch: int
    best_val_loss: float
    calibration: Calibration
    seconds: float
    images_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)


def _load_images(items: Sequence[ImageRecord] | Sequence[np.ndarray]) -> tuple[list[np.ndarray], str]:
    """RGB arrays and a sha256 of the training set (file names and sizes, or array bytes)."""
    digest = hashlib.sha256()
    images: list[np.ndarray] = []
    for item in items:
        if isinstance(item, ImageRecord):
            images.append(load_rgb(item.path))
            digest.update(f"{item.path.name}|{item.path.stat().st_size}\n".encode())
        else:
            array = np.asarray(item)
            images.append(array)
            digest.update(hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest())
    return images, digest.hexdigest()


def _inputs(model: STFPM, images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Pre-processed inputs (N, 3, S, S) float16, made once with the model's own pre-processing."""
    with torch.inference_mode():
        return torch.cat([model.preprocess(torch.from_numpy(img).to(device)[None]).half() for img in images])


def _teacher_cache(model: STFPM, inputs: torch.Tensor, batch: int) -> list[torch.Tensor]:
    chunks: list[list[torch.Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            chunks.append([f.half() for f in model.teacher(inputs[start:start + batch].float())])
    return [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def _val_loss(model: STFPM, inputs: torch.Tensor, feats: list[torch.Tensor], batch: int, bf16: bool) -> float:
    model.eval()
    total = 0.0
    with torch.inference_mode(), torch.autocast(inputs.device.type, torch.bfloat16, enabled=bf16):
        for start in range(0, len(inputs), batch):
            student = model.student(inputs[start:start + batch].float())
            teacher = [f[start:start + batch] for f in feats]
            total += float(stfpm_loss(teacher, student)) * len(student[0])
    return total / len(inputs)


@dataclass
class _Split:
    """Pre-processed train/validation inputs and their cached teacher features."""

    train_x: torch.Tensor
    val_x: torch.Tensor
    train_t: list[torch.Tensor]
    val_t: list[torch.Tensor]
    val_shapes: list[tuple[int, int]] = field(default_factory=list)  # held-out images' (H, W)
    val_tiles: list[int] = field(default_factory=list)  # tiles per held-out image, in val_x's order


@dataclass
class _Progress:
    """Where a run stands: the next epoch, the best epoch so far and its student weights."""

    start_epoch: int = 0
    best_epoch: int = -1
    best_val: float = float("inf")
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, model: STFPM, epoch: int, entry: dict[str, float]) -> None:
        """Append the epoch; keep the student if its validation loss is the best so far."""
        self.history.append(entry)
        if entry["val_loss"] < self.best_val:
            self.best_val, self.best_epoch = entry["val_loss"], epoch
            self.best_state = {k: v.detach().clone() for k, v in model.student.state_dict().items()}

    def should_stop(self, epoch: int, patience: int) -> bool:
        """Early stopping: no better validation loss for ``patience`` epochs (0: never)."""
        return bool(patience) and epoch - self.best_epoch >= patience


def train(config: TrainConfig, train_records: Sequence[ImageRecord] | Sequence[np.ndarray], out: Path,
          progress: bool = True, resume: bool = False,
          defect_images: Sequence[np.ndarray] | None = None, notes: dict[str, Any] | None = None) -> TrainResult:
    """Train, pick the best epoch by validation loss, calibrate and write the checkpoint to ``out``.

    ``defect_images`` (optional) are only used to report an F1-optimal threshold next to the calibrated one.
    ``notes`` join the checkpoint's training metadata (e.g. ``{"recipe": "fine"}``).
    """
    out = Path(out)
    state_path = out.with_name(out.name + ".state.pt")
    device = select_device(config.device)
    images, data_hash = _load_images(train_records)
    if len(images) < 2:
        raise InvalidDataError(f"training needs at least 2 good images, got {len(images)}")
    torch.manual_seed(config.seed)
    model = _build_model(config, device)
    split = _split_and_cache(model, images, config, device)
    optimizer = torch.optim.SGD(model.student.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    state = _Progress(best_state={k: v.clone() for k, v in model.student.state_dict().items()})
    if resume and state_path.is_file():
        state = _resume(state_path, model, optimizer, config, data_hash, device)
    started = time.perf_counter()
    seen = _epochs(model, optimizer, split, config, state, device, progress,
                   lambda epoch: _save_state(state_path, epoch, model, optimizer, state, config, data_hash))
    seconds = time.perf_counter() - started

    model.student.load_state_dict(state.best_state)
    model.eval()
    calibration = _calibrate(model, split, config, defect_images)
    training = {"config": config.to_dict(), "best_epoch": state.best_epoch, "best_val_loss": state.best_val,
                "epochs_run": len(state.history), "n_train": len(split.train_x), "n_val": len(split.val_x),
                "data_sha256": data_hash, **(notes or {})}
    save_checkpoint(out, model.state_dict(), _metadata(model, config, calibration, training).to_dict())
    state_path.unlink(missing_ok=True)
    return TrainResult(path=out, best_epoch=state.best_epoch, best_val_loss=state.best_val, calibration=calibration,
                       seconds=seconds, images_per_second=seen / max(seconds, 1e-9), history=state.history)


def _build_model(config: TrainConfig, device: torch.device) -> STFPM:
    """The network with its pretrained teacher, on ``device``."""
    model = STFPM(config.backbone, config.image_size, config.taps, config.sigma, config.resize_mode,
                  config.score_top_k, config.tap_weights or (), config.map_taps or (), config.score_taps or ())
    load_pretrained(model.teacher, get_spec(config.backbone).pretrained(config.teacher_weights), config.backbone)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _split_and_cache(model: STFPM, images: list[np.ndarray], config: TrainConfig, device: torch.device) -> _Split:
    """Seeded held-out split (for best-epoch choice and calibration) and the teacher feature caches."""
    held_out = held_out_indices(len(images), config)  # the first indices of the same seeded permutation
    kept = np.random.default_rng(config.seed).permutation(len(images))[len(held_out):]
    # split images first, then tile: no tile of a held-out image is trained on
    train_tiles, _ = tiles_of_images([images[i] for i in kept], config.tiling)
    val_images = [images[i] for i in held_out]
    val_tiles, val_counts = tiles_of_images(val_images, config.tiling)
    train_x, val_x = _inputs(model, train_tiles, device), _inputs(model, val_tiles, device)
    return _Split(train_x, val_x, _teacher_cache(model, train_x, config.batch_size),
                  _teacher_cache(model, val_x, config.batch_size),
                  [(int(i.shape[0]), int(i.shape[1])) for i in val_images], val_counts)


def held_out_indices(n_images: int, config: TrainConfig) -> np.ndarray:
    """Indices of the good images a run holds out (best epoch, calibration; recipe choice): seeded, so every
    recipe trained with the same seed on the same images holds out the same ones."""
    order = np.random.default_rng(config.seed).permutation(n_images)
    return order[:min(n_images - 1, max(1, round(n_images * config.val_fraction)))]


def _resume(path: Path, model: STFPM, optimizer: torch.optim.Optimizer, config: TrainConfig, data_hash: str,
            device: torch.device) -> _Progress:
    """The state of an interrupted run with the same settings and data."""
    saved = torch.load(path, map_location=device, weights_only=True)
    if saved["config"] != config.to_dict() or saved["data_sha256"] != data_hash:
        raise InvalidValueError(f"{path} belongs to a run with other settings or data; delete it or drop --resume")
    model.student.load_state_dict(saved["student"])
    optimizer.load_state_dict(saved["optimizer"])
    return _Progress(start_epoch=int(saved["epoch"]) + 1, best_epoch=int(saved["best_epoch"]),
                     best_val=float(saved["best_val"]), best_state=saved["best_student"],
                     history=list(saved["history"]))


def _save_state(path: Path, epoch: int, model: STFPM, optimizer: torch.optim.Optimizer, state: _Progress,
                config: TrainConfig, data_hash: str) -> None:
    torch.save({"epoch": epoch, "student": model.student.state_dict(), "optimizer": optimizer.state_dict(),
                "best_student": state.best_state, "best_epoch": state.best_epoch, "best_val": state.best_val,
                "history": state.history, "config": config.to_dict(), "data_sha256": data_hash}, path)


def _epochs(model: STFPM, optimizer: torch.optim.Optimizer, split: _Split, config: TrainConfig, state: _Progress,
            device: torch.device, progress: bool, save: Callable[[int], None]) -> int:
    """Run the remaining epochs (early stopping by validation loss); returns the training images seen."""
    from tqdm import tqdm

    bf16 = native_bf16(device) if config.bf16 is None else config.bf16
    patience = patience_epochs(config.patience, -(-len(split.train_x) // config.batch_size))
    seen = 0
    bar = tqdm(range(state.start_epoch, config.epochs), disable=not progress, unit="epoch", desc="train",
               initial=state.start_epoch, total=config.epochs)
    for epoch in bar:
        epoch_start = time.perf_counter()
        train_loss = _train_epoch(model, optimizer, split, config, epoch, bf16, device)
        seen += len(split.train_x)
        if config.refresh_bn_stats:
            refresh_bn_stats(model.student, split.train_x, config.batch_size, bf16, config.channels_last)
        val = _val_loss(model, split.val_x, split.val_t, config.batch_size, bf16)
        rate = len(split.train_x) / max(time.perf_counter() - epoch_start, 1e-9)
        state.record(model, epoch, {"epoch": float(epoch), "train_loss": train_loss, "val_loss": val,
                                    "images_per_second": rate})
        bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val:.4f}", img_s=f"{rate:.1f}")
        save(epoch)
        if state.should_stop(epoch, patience):
            break
    return seen


def patience_epochs(patience: int, updates_per_epoch: int) -> int:
    """Epochs without a better validation loss before stopping: ``patience``, or more where that many epochs hold
    fewer than ``MIN_PATIENCE_UPDATES`` student updates (small sets); 0 stays 0 (run every epoch)."""
    return max(patience, -(-MIN_PATIENCE_UPDATES // max(updates_per_epoch, 1))) if patience else 0


def _train_epoch(model: STFPM, optimizer: torch.optim.Optimizer, split: _Split, config: TrainConfig, epoch: int,
                 bf16: bool, device: torch.device) -> float:
    """One pass over the training inputs in a seeded order; returns the mean training loss."""
    model.train()
    total = 0.0
    perm = torch.randperm(len(split.train_x), generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
    steps = -(-len(perm) // config.batch_size)
    for step, start in enumerate(range(0, len(perm), config.batch_size)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch + step / steps)
        idx = perm[start:start + config.batch_size].to(device)
        x = split.train_x[idx].float()
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            student = model.student(x)
        loss = stfpm_loss([f[idx] for f in split.train_t], student)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
    return total / len(perm)


def refresh_bn_stats(student: torch.nn.Module, inputs: torch.Tensor, batch: int, bf16: bool,
                     channels_last: bool) -> None:
    """Set every batch norm's running mean and variance to their average over ``inputs`` (no weight change)."""
    from torch.optim.swa_utils import update_bn

    batches = (inputs[i:i + batch].float() for i in range(0, len(inputs), batch))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.autocast(inputs.device.type, torch.bfloat16, enabled=bf16):
        update_bn((x.contiguous(memory_format=layout) for x in batches), student)  # restores the module's mode


def learning_rate(config: TrainConfig, progress: float) -> float:
    """The learning rate at ``progress`` epochs into training (fractional within an epoch)."""
    if config.lr_schedule == "constant":
        return config.lr
    if progress < 1.0:
        return config.lr * max(progress, 0.05)
    span = max(config.epochs - 1, 1)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress - 1.0, span) / span))


def _metadata(model: STFPM, config: TrainConfig, calibration: Calibration, training: dict[str, Any]) -> ModelMetadata:
    spec = get_spec(config.backbone)
    return ModelMetadata(
        backbone=config.backbone, taps=tuple(model.taps), image_size=config.image_size, calibration=calibration,
        sigma=config.sigma, resize_mode=config.resize_mode, score_top_k=config.score_top_k,
        tap_weights=model.tap_weights, map_taps=model.map_taps, score_taps=model.score_taps,
        input_mean=tuple(spec.mean), input_std=tuple(spec.std),
        map_cells=model.map_cells(), tiling=config.tiling, training=training,
        versions={"linewatch": _package_version(), "torch": torch.__version__})


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays on ``device``: CUDA, or a CPU whose oneDNN has native bf16 kernels."""
    if device.type == "cuda":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _calibrate(model: STFPM, split: _Split, config: TrainConfig,
               defect_images: Sequence[np.ndarray] | None) -> Calibration:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps shown, image scores) of pre-processed inputs (tiles, for a tiled recipe)."""
        maps, scores = [], []
        with torch.inference_mode():
            for i in range(0, len(x), config.batch_size):
                shown, score_maps = model.scored_maps(x[i:i + config.batch_size].float())
                maps.append(shown.float().cpu())
                scores.append(model.image_scores(score_maps.float()).cpu())
        return torch.cat(maps), torch.cat(scores)

    val_x = split.val_x
    maps, val_scores = run(val_x)
    scores, pixels = val_scores.numpy(), maps.numpy()
    if config.tiling != "none":  # thresholds per part: each held-out image's worst tile, its stitched map
        scores, part_maps = merge_tiles(scores, pixels, split.val_shapes, split.val_tiles, config.image_size,
                                        config.tiling)
        pixels = np.concatenate([m.ravel() for m in part_maps])
    calibration = calibrate(scores, pixels, config.target_false_alarm_rate, config.pixel_false_positive_rate)
    if defect_images:
        defect_tiles, counts = tiles_of_images(list(defect_images), config.tiling)
        defect_maps, tile_scores = run(_inputs(model, defect_tiles, val_x.device))
        defect_scores = tile_scores.numpy() if config.tiling == "none" else merge_tiles(
            tile_scores.numpy(), defect_maps.numpy(), [d.shape[:2] for d in defect_images], counts,
            config.image_size, config.tiling)[0]
        labels = np.r_[np.zeros(len(scores), bool), np.ones(len(defect_scores), bool)]
        threshold, f1 = f1_optimal_threshold(np.r_[scores, defect_scores], labels)
        calibration = Calibration(**{**calibration.to_dict(), "f1_threshold": threshold, "f1": f1})
    return calibration


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("linewatch")
    except PackageNotFoundError:
        return "unknown"


def train_synthetic_model(out: Path, *, epochs: int = 2, image_size: int = 64, n_images: int = 24,
                          seed: int = 0) -> Path:
    """A tiny calibrated model trained on synthetic good parts (seconds on 2 cores); for tests and demos."""
    from linewatch.ingest.synthetic import render_sample

    images = [render_sample(seed * 100_000 + i, size=image_size, defect_probability=0.0).image
              for i in range(n_images)]
    # shallower taps than the default: at 64 px the default's stride-32 tap would be a 2x2 map
    config = TrainConfig(image_size=image_size, epochs=epochs, batch_size=8, lr=0.4, seed=seed, device="cpu",
                         taps=(2, 4, 10))
    return train(config, images, Path(out), progress=False).path
