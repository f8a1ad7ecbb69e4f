"""Class-wise NMS of horizontal boxes with torchvision's exact results, the classes run side by side on CPU.

``torchvision.ops.batched_nms`` on CPU runs one single-threaded ``nms`` per class, one after the other, once the
set is large (more than 1000 boxes); the Oriented R-CNN RPN hands it five pyramid levels of up to 2000 proposals
each, ~50 ms of one core per 1024 x 1024 image while the other cores idle. ``nms`` releases the GIL, so
:func:`batched_nms_hbox` runs the classes in a few threads (at most ``torch.get_num_threads()``), then combines
the kept boxes exactly as torchvision does (same indices, same order). Small sets, GPU tensors, one-thread
settings and tracing / compiling go straight to torchvision.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

__all__ = ["batched_nms_hbox"]

_TORCHVISION_PER_CLASS = 4000  # boxes.numel() above which torchvision's batched_nms loops over the classes on CPU


def batched_nms_hbox(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)``: indices of the kept boxes by decreasing
    score; ``boxes`` (N, 4) ``(x1, y1, x2, y2)`` pixels, NMS only among boxes of the same ``idxs`` value."""
    workers = min(torch.get_num_threads(), 8)
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if tracing or boxes.device.type != "cpu" or boxes.numel() <= _TORCHVISION_PER_CLASS or workers < 2:
        return batched_nms(boxes, scores, idxs, iou_threshold)
    members = [torch.where(idxs == c)[0] for c in torch.unique(idxs)]
    if len(members) < 2:
        return batched_nms(boxes, scores, idxs, iou_threshold)
    members.sort(key=lambda m: -m.numel())  # largest classes first: the threads finish together

    def one_class(sel: Tensor) -> Tensor:
        return sel[nms(boxes[sel], scores[sel], iou_threshold)]

    with ThreadPoolExecutor(min(workers, len(members))) as pool:
        kept = list(pool.map(one_class, members))
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for k in kept:
        keep_mask[k] = True
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]
