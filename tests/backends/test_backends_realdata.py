"""Every backend and precision keeps torch fp32's accuracy on every shared set: a real loss fails, noise does not.

Kept affordable (stated): per set, a model of the default architecture and size trained with the default
recipe for 15 epochs on a quarter of the good training images (at least 32, at most 96: the paper-web sets
have 32 in all, and with 8 the export's fidelity check had 2 held-out images), evaluated on every test image;
the INT8 export is calibrated on exactly the images it was trained on (the same folder, so ``data_sha256``
matches).

What is asserted, per set and backend, against torch fp32 on the same images:

- the per-image scores rank the test images alike (Spearman >= ``RANKS_ALIKE``): a backend that reorders
  images has changed what the model says, whatever the model's quality;
- pixel AUROC within ``PIXEL_TOLERANCE`` (hundreds of thousands of pixels: stable; one set of histogram bin
  edges, from the fp32 maps, for every backend, so there is no binning difference);
- image AUROC within ``max(IMAGE_TOLERANCE, Z * SE)``, SE the paired (DeLong) standard error of the
  difference on this set: with 25 good and 87 defective images one swapped pair moves AUROC by 0.0005, and
  near-tied pairs reshuffled by rounding move it by a few of those; Z = 3 fails a real loss, not that noise.
  Only where the fp32 model detects: its image AUROC exceeds 0.5 by more than ``Z`` of its own standard
  errors on this set. The image AUROC of a model at chance (mvtec3d_tire's 15-epoch model scores about 0.52
  on 25 good and 87 defective images) moves with every near tie and says nothing about the backend; its rank
  agreement and pixel AUROC are still asserted.

Both CPU vendors' numerics occur on this project's machines (Intel Xeon with AMX, AMD EPYC with AVX-512
BF16/VNNI); the test prints which one ran. Figures from both are in benchmarks/results/int8_accuracy.md.
With the first block quantized too (an earlier export scope) mvtec3d_tire missed (-0.015 image). The INT8 export's own
fidelity report (good images only) is checked to be there. Skipped when ../shared/datasets is absent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from linewatch.common.images import list_test, list_train_good, load_mask, load_rgb
from linewatch.detector.evaluation.metrics import (
    PixelAccumulator,
    auroc,
    auroc_standard_error,
    paired_auroc_difference_se,
    quantile_edges,
    rank_correlation,
)
from linewatch.detector.model.backends import load_model
from linewatch.detector.model.backends.loader import cpuinfo_field
from linewatch.detector.model.backends.runners import openvino_capabilities
from linewatch.detector.model.export import export_openvino
from linewatch.detector.model.inference import InferenceModel
from linewatch.detector.model.training.train import TrainConfig, train

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
SETS = sorted(p.name for p in DATASETS.glob("*") if (p / p.name / "train" / "good").is_dir())
PIXEL_TOLERANCE = 0.005
IMAGE_TOLERANCE = 0.005  # the floor of the image AUROC bound; the bound grows with the set's paired SE
Z = 3.0
# Spearman of the per-image scores, backend against torch fp32, over every test image. Within a class, near-equal
# scores of a model that separates the classes well reorder freely under rounding: INT8 measured 0.9696 on
# paper_brg02_rl's 64 test images (AMD EPYC) with image and pixel AUROC unchanged
RANKS_ALIKE = 0.95


@dataclass(frozen=True)
class Scored:
    """What one model gives on a set's test images."""

    image_scores: np.ndarray
    image_auroc: float
    pixel_auroc: float


@dataclass(frozen=True)
class Trained:
    """A set's torch fp32 model, its good-image folder, its figures and the pixel histogram edges."""

    name: str
    checkpoint: Path
    good: Path
    reference: Scored
    labels: np.ndarray
    edges: np.ndarray


def _subset_folder(data: Path, out: Path) -> Path:
    """A quarter of the good training images, evenly spaced (at least 32, at most 96), linked into ``out``
    (names and sizes as the originals)."""
    out.mkdir(parents=True)
    records = list_train_good(data)
    step = max(1, min(4, len(records) // 32))
    for record in records[::step][:96]:
        os.symlink(record.path, out / record.path.name)
    return out


def _score(model: InferenceModel, data: Path, edges: np.ndarray | None) -> tuple[Scored, np.ndarray]:
    """Image scores, image AUROC and pixel AUROC on every test image of ``data``, and the histogram bin edges
    of its pixel AUROC: ``edges``, or (for the fp32 reference) taken from this model's maps."""
    records = list_test(data)  # every test image (see the module docstring)
    scores, maps, shapes = _predict(model, records)
    if edges is None:
        edges = quantile_edges(np.concatenate([m.ravel()[::7] for m in maps]), 4096)
    accumulator = PixelAccumulator(edges)
    for record, m, shape in zip(records, maps, shapes, strict=True):
        accumulator.add(m, load_mask(record, shape))
    return Scored(scores, auroc(scores, _labels(records)), accumulator.auroc()), edges


def _predict(model: InferenceModel, records: list) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int]]]:
    scores, maps, shapes = [], [], []
    for start in range(0, len(records), 16):
        batch = [load_rgb(r.path) for r in records[start:start + 16]]
        prediction = model.predict(batch)
        scores.append(prediction.image_scores)
        maps += [model.map_to_image(m, img.shape[:2]) for m, img in zip(prediction.maps, batch, strict=True)]
        shapes += [img.shape[:2] for img in batch]
    return np.concatenate(scores), maps, shapes


def _labels(records: list) -> np.ndarray:
    return np.array([r.label == "defect" for r in records])


@pytest.fixture(scope="module", params=SETS)
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """(set, checkpoint, its good-image folder, fp32 image AUROC, fp32 pixel AUROC, bin edges) per shared set."""
    name = str(request.param)
    data = DATASETS / name / name
    root = tmp_path_factory.mktemp(f"realdata-{name}")
    good = _subset_folder(data, root / "good")
    # the default recipe for 15 epochs: models this weak (3 epochs, image AUROC near chance) turned any
    # INT8 noise into large AUROC swings, which said more about the model than about INT8
    config = TrainConfig(epochs=15, batch_size=16, device="cpu")  # the default size and taps
    checkpoint = train(config, list_train_good(good), root / "m.safetensors", progress=False).path
    reference, edges = _score(load_model(checkpoint, "torch", "cpu"), data, None)
    return Trained(name, checkpoint, good, reference, _labels(list_test(data)), edges)


def _assert_close(label: str, model: InferenceModel, trained: Trained) -> None:
    ref, labels = trained.reference, trained.labels
    got, _ = _score(model, DATASETS / trained.name / trained.name, trained.edges)
    ranks = rank_correlation(ref.image_scores, got.image_scores)
    bound = max(IMAGE_TOLERANCE, Z * paired_auroc_difference_se(ref.image_scores, got.image_scores, labels))
    print(f"{trained.name} ({_cpu_vendor()}): torch fp32 image "
          f"{ref.image_auroc:.4f} pixel {ref.pixel_auroc:.4f}; {label} image {got.image_auroc:.4f} (bound "
          f"{bound:.4f}) pixel {got.pixel_auroc:.4f}; rank correlation {ranks:.4f}")
    assert ranks >= RANKS_ALIKE, f"{label}: per-image scores rank the test images differently (Spearman {ranks:.4f})"
    assert abs(got.pixel_auroc - ref.pixel_auroc) <= PIXEL_TOLERANCE, \
        f"{label}: pixel AUROC {got.pixel_auroc:.4f} vs {ref.pixel_auroc:.4f}"
    chance_bound = 0.5 + Z * auroc_standard_error(ref.image_scores, labels)
    if not ref.image_auroc > chance_bound:
        print(f"{trained.name}: image AUROC parity not asserted, the fp32 model does not detect on this set "
              f"({ref.image_auroc:.3f}, not above 0.5 + {Z:g} standard errors = {chance_bound:.3f})")
        return
    assert abs(got.image_auroc - ref.image_auroc) <= bound, \
        f"{label}: image AUROC {got.image_auroc:.4f} vs {ref.image_auroc:.4f} (bound {bound:.4f})"


def _cpu_vendor() -> str:
    """The CPU vendor (GenuineIntel, AuthenticAMD), whose numerics the INT8 and bf16 kernels follow."""
    return cpuinfo_field("vendor_id") or "unknown vendor"


@pytest.mark.skipif(not SETS, reason=f"no shared data sets at {DATASETS}")
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_backends_keep_torch_accuracy(backend: str, trained: Trained) -> None:
    _assert_close(f"{backend} fp32", load_model(trained.checkpoint, backend, "cpu"), trained)


@pytest.mark.skipif(not SETS, reason=f"no shared data sets at {DATASETS}")
def test_bf16_keeps_torch_accuracy(trained: Trained) -> None:
    """OpenVINO bf16 where the CPU does bf16 natively (AVX-512 BF16 or AMX); elsewhere it is refused, not emulated."""
    if "BF16" not in openvino_capabilities():
        pytest.skip(f"no native bf16 on this CPU (OpenVINO CPU capabilities: {sorted(openvino_capabilities())})")
    _assert_close("openvino bf16", load_model(trained.checkpoint, "openvino", "cpu", precision="bf16"), trained)


@pytest.fixture(scope="module")
def int8_export(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``linewatch export --format openvino --int8`` of the set's model, calibrated on its training images."""
    return export_openvino(trained.checkpoint, tmp_path_factory.mktemp(f"int8-{trained.name}"), int8=True,
                           calibration_data=trained.good)


@pytest.mark.skipif(not SETS, reason=f"no shared data sets at {DATASETS}")
def test_int8_export_reports_its_fidelity_to_fp32(int8_export: Path) -> None:
    """Only good images exist at export time: the export measures INT8 against fp32 on them, so a user sees the risk."""
    measured = json.loads((int8_export / "linewatch.json").read_text())["int8_fidelity"]
    print(measured)
    assert measured["images"] >= 5
    assert -1.0 <= measured["spearman"] <= 1.0 and 0.0 <= measured["same_verdict"] <= 1.0
    assert 0.0 <= measured["median_normalised_shift"] <= measured["max_normalised_shift"] <= 1.0


def _has_int8_dot_product() -> bool:
    """Whether the CPU has VNNI or AMX (the INT8 dot products OpenVINO's INT8 kernels are built for)."""
    flags = set((cpuinfo_field("flags") or "").split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


@pytest.mark.skipif(not SETS, reason=f"no shared data sets at {DATASETS}")
def test_int8_keeps_torch_accuracy(trained: Trained, int8_export: Path) -> None:
    """Where the CPU has VNNI or AMX. Without them (AVX2 only) the INT8 kernels lack those dot products (u8 x s8
    products summed in pairs can saturate), and INT8 was coarser than this bound: on an AVX2-only AMD EPYC,
    paper_brg02_rl's ranking agreed at Spearman 0.909 (image AUROC 0.810 against 0.846, inside its bound;
    pixel within 0.003); see benchmarks/results/int8_accuracy.md."""
    if not _has_int8_dot_product():
        pytest.skip("no VNNI or AMX on this CPU: its INT8 kernels are coarser than the parity bound (int8_accuracy.md)")
    _assert_close("openvino int8", load_model(int8_export), trained)
