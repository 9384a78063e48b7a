"""STFPM training: cached teacher features, SGD on the student, best-validation checkpoint, calibration.

The teacher is frozen and there is no augmentation, so each image's teacher features are computed once
and kept (float16) for all epochs; only the student runs forward and backward. The checkpoint is the
epoch with the lowest loss on held-out good images (never test labels), calibrated on those images.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linewatch.common.images import ImageRecord, load_rgb
from linewatch.detector.calibrate import Calibration, calibrate, f1_optimal_threshold
from linewatch.detector.checkpoint import save_checkpoint
from linewatch.detector.device import select_device
from linewatch.detector.metadata import ModelMetadata
from linewatch.detector.stfpm.backbones import get_spec, load_pretrained
from linewatch.detector.stfpm.loss import stfpm_loss
from linewatch.detector.stfpm.torch_model import STFPM


@dataclass
class TrainConfig:
    """Training settings (defaults: see the results in benchmarks/results/model_accuracy.md)."""

    backbone: str = "efficientnet_lite0"
    # 128 px, 20 epochs, lr 0.4, batch 16 (lite0 taps 10/14, see backbones.py): what 2 CPU cores afford
    # (the paper: 256 px, 100 epochs, batch 32); measured in benchmarks/results/model_accuracy.md. lr 0.4 is
    # the paper's number (its loss sums over the batch, ours averages, so the step does not grow with it).
    image_size: int = 128
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.4
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
    device: str | None = "auto"
    # None = where the hardware does bf16 natively (CUDA, or a CPU with AVX-512 BF16/AMX). Emulated bf16 is
    # slower, not faster: on an AVX2-only EPYC, 256 px batch 16 trained at 1.5 img/s in bf16 vs 9.0 in fp32.
    bf16: bool | None = None
    channels_last: bool = True
    # stop when the validation loss has not improved for this many epochs (0 = run every epoch)
    patience: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (paths as strings)."""
        data = asdict(self)
        data["teacher_weights"] = str(self.teacher_weights) if self.teacher_weights else None
        data["taps"] = list(self.taps) if self.taps else None
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


def train(config: TrainConfig, train_records: Sequence[ImageRecord] | Sequence[np.ndarray], out: Path,
          progress: bool = True, resume: bool = False,
          defect_images: Sequence[np.ndarray] | None = None) -> TrainResult:
    """Train, pick the best epoch by validation loss, calibrate and write the checkpoint to ``out``.

    ``defect_images`` (optional) are only used to report an F1-optimal threshold next to the calibrated one.
    """
    from tqdm import tqdm

    out = Path(out)
    state_path = out.with_name(out.name + ".state.pt")
    device = select_device(config.device)
    bf16 = native_bf16(device) if config.bf16 is None else config.bf16
    images, data_hash = _load_images(train_records)
    if len(images) < 2:
        raise ValueError(f"training needs at least 2 good images, got {len(images)}")
    torch.manual_seed(config.seed)
    model = STFPM(config.backbone, config.image_size, config.taps, config.sigma, config.resize_mode,
                  config.score_top_k)
    load_pretrained(model.teacher, get_spec(config.backbone).pretrained(config.teacher_weights), config.backbone)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    order = np.random.default_rng(config.seed).permutation(len(images))
    n_val = min(len(images) - 1, max(1, round(len(images) * config.val_fraction)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    inputs = _inputs(model, images, device)
    train_x, val_x = inputs[torch.from_numpy(train_idx)], inputs[torch.from_numpy(val_idx)]
    train_t = _teacher_cache(model, train_x, config.batch_size)
    val_t = _teacher_cache(model, val_x, config.batch_size)

    optimizer = torch.optim.SGD(model.student.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    start_epoch, best_epoch, best_val = 0, -1, float("inf")
    best_state = {k: v.clone() for k, v in model.student.state_dict().items()}
    history: list[dict[str, float]] = []
    if resume and state_path.is_file():
        saved = torch.load(state_path, map_location=device, weights_only=True)
        if saved["config"] != config.to_dict() or saved["data_sha256"] != data_hash:
            raise ValueError(f"{state_path} belongs to a run with other settings or data; delete it or drop --resume")
        model.student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        best_state, best_epoch, best_val = saved["best_student"], int(saved["best_epoch"]), float(saved["best_val"])
        start_epoch, history = int(saved["epoch"]) + 1, list(saved["history"])

    started = time.perf_counter()
    seen = 0
    bar = tqdm(range(start_epoch, config.epochs), disable=not progress, unit="epoch", desc="train",
               initial=start_epoch, total=config.epochs)
    for epoch in bar:
        model.train()
        epoch_start, total = time.perf_counter(), 0.0
        perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        for start in range(0, len(perm), config.batch_size):
            idx = perm[start:start + config.batch_size].to(device)
            x = train_x[idx].float()
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                student = model.student(x)
            loss = stfpm_loss([f[idx] for f in train_t], student)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        seen += len(perm)
        val = _val_loss(model, val_x, val_t, config.batch_size, bf16)
        rate = len(perm) / max(time.perf_counter() - epoch_start, 1e-9)
        history.append({"epoch": float(epoch), "train_loss": total / len(perm), "val_loss": val,
                        "images_per_second": rate})
        if val < best_val:
            best_val, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.student.state_dict().items()}
        bar.set_postfix(loss=f"{total / len(perm):.4f}", val=f"{val:.4f}", img_s=f"{rate:.1f}")
        torch.save({"epoch": epoch, "student": model.student.state_dict(), "optimizer": optimizer.state_dict(),
                    "best_student": best_state, "best_epoch": best_epoch, "best_val": best_val,
                    "history": history, "config": config.to_dict(), "data_sha256": data_hash}, state_path)
        if config.patience and epoch - best_epoch >= config.patience:
            break
    seconds = time.perf_counter() - started

    model.student.load_state_dict(best_state)
    model.eval()
    calibration = _calibrate(model, val_x, config, defect_images)
    spec = get_spec(config.backbone)
    metadata = ModelMetadata(
        backbone=config.backbone, taps=tuple(model.taps), image_size=config.image_size, calibration=calibration,
        sigma=config.sigma, resize_mode=config.resize_mode, score_top_k=config.score_top_k,
        input_mean=tuple(spec.mean), input_std=tuple(spec.std), map_cells=model.map_cells(),
        training={"config": config.to_dict(), "best_epoch": best_epoch, "best_val_loss": best_val,
                  "epochs_run": len(history), "n_train": len(train_idx), "n_val": n_val, "data_sha256": data_hash},
        versions={"linewatch": _package_version(), "torch": torch.__version__})
    save_checkpoint(out, model.state_dict(), metadata.to_dict())
    state_path.unlink(missing_ok=True)
    return TrainResult(path=out, best_epoch=best_epoch, best_val_loss=best_val, calibration=calibration,
                       seconds=seconds, images_per_second=seen / max(seconds, 1e-9), history=history)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays on ``device``: CUDA, or a CPU whose oneDNN has native bf16 kernels."""
    if device.type == "cuda":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _calibrate(model: STFPM, val_x: torch.Tensor, config: TrainConfig,
               defect_images: Sequence[np.ndarray] | None) -> Calibration:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model.maps_from_input(x[i:i + config.batch_size].float())
                              for i in range(0, len(x), config.batch_size)]).float().cpu()

    maps = run(val_x)
    scores = model.image_scores(maps).numpy()
    calibration = calibrate(scores, maps.numpy(), config.target_false_alarm_rate, config.pixel_false_positive_rate)
    if defect_images:
        defect_scores = model.image_scores(run(_inputs(model, list(defect_images), val_x.device))).numpy()
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
