"""Try-on and design metrics (paper Table 3; docs/design.md section 10): SSIM and PSNR against the
ground truth over the whole image and inside the mask, the share of kept pixels that changed, and
the edge IoU between a sketch and the image drawn from it.

Images are (N, 3, H, W) float in [0, 1]; masks (N, 1, H, W), 1 where the image was generated.
SSIM and PSNR are torchmetrics'; SSIM inside the mask is the mean of torchmetrics' SSIM map
(11x11 Gaussian window) over the masked pixels, PSNR inside the mask uses their mean squared error.
"""

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor

_MIN_MSE = 1e-10  # PSNR of an exact match: 100 dB rather than infinity


def paired_scores(result: Tensor, truth: Tensor, mask: Tensor) -> dict[str, float]:
    """Means over the N pairs: ``ssim``, ``psnr`` (whole image), ``ssim_mask``, ``psnr_mask``
    (generated region only) and ``changed_outside_mask`` (see :func:`changed_outside`)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    result, truth, mask = result.float().clamp(0, 1), truth.float().clamp(0, 1), mask.float()
    ssim, ssim_map = structural_similarity_index_measure(
        result, truth, data_range=1.0, reduction="none", return_full_image=True
    )  # (N,), (N, 3, H, W)
    area = mask.sum(dim=(1, 2, 3)).clamp_min(1) * result.shape[1]  # (N,) masked values
    ssim_mask = (ssim_map * mask).sum(dim=(1, 2, 3)) / area  # (N,)
    mse_mask = ((result - truth) ** 2 * mask).sum(dim=(1, 2, 3)) / area  # (N,)
    psnr = peak_signal_noise_ratio(result, truth, data_range=1.0, reduction="none", dim=(1, 2, 3))  # (N,)
    return {
        "ssim": float(ssim.mean()),
        "ssim_mask": float(ssim_mask.mean()),
        "psnr": float(psnr.clamp_max(100).mean()),
        "psnr_mask": float((-10 * torch.log10(mse_mask.clamp_min(_MIN_MSE))).mean()),
        "changed_outside_mask": changed_outside(result, truth, mask),
    }


def changed_outside(result: Tensor, known: Tensor, mask: Tensor) -> float:
    """The share of pixels outside the mask whose 8-bit colour differs from the known image's
    (0 when the known region is copied back, as it must be)."""
    def to_bytes(images: Tensor) -> Tensor:
        return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)

    outside = mask[:, 0] < 0.5  # (N, H, W)
    changed = (to_bytes(result) != to_bytes(known)).any(dim=1) & outside  # (N, H, W)
    return float(changed.sum() / outside.sum().clamp_min(1))


def edge_iou(first: np.ndarray, second: np.ndarray, tolerance: int = 1) -> float:
    """IoU of two (H, W) binary edge maps where an edge pixel of one map counts as shared when the
    other has an edge within ``tolerance`` pixels (so a line drawn one pixel off still matches):
    shared = the mean of the two maps' matched counts, union = both counts minus shared. Two empty
    maps give 1.0, one empty map 0.0."""
    a, b = np.asarray(first) > 0, np.asarray(second) > 0

    def near(edges: np.ndarray) -> np.ndarray:
        image = Image.fromarray(edges.astype(np.uint8) * 255)
        return np.asarray(image.filter(ImageFilter.MaxFilter(2 * tolerance + 1))) > 0

    shared = ((a & near(b)).sum() + (b & near(a)).sum()) / 2
    union = a.sum() + b.sum() - shared
    return float(shared / union) if union else 1.0
