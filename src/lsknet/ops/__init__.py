"""Pure-PyTorch rotated-box ops: conventions, exact IoU/IoF, rotated NMS, RoIAlignRotated, box coders.

Rotated boxes are ``(cx, cy, w, h, theta)``: pixels, radians, theta turning the width axis towards +y
(clockwise on screen), regularized to ``le90`` unless stated otherwise. Polygons are ``(N, 4, 2)`` corners.
Everything is tensor code that runs on the input's device; ``ops`` imports nothing else from lsknet.
"""

from lsknet.ops.boxes import (
    ANGLE_VERSIONS,
    hbox_to_rbox,
    poly_to_rbox,
    rbox_to_corners,
    rbox_to_hbox,
    rbox_to_tv_boxes,
    regularize_rbox,
    tv_boxes_to_rbox,
)
from lsknet.ops.coders import DeltaXYWHAHCoder, DeltaXYWHCoder, DeltaXYWHTCoder, MidpointOffsetCoder
from lsknet.ops.iou import poly_iof, poly_iou, rbox_iof, rbox_iou
from lsknet.ops.multiclass_nms import multiclass_nms_rotated
from lsknet.ops.nms import nms_rotated
from lsknet.ops.resize import keep_ratio_size
from lsknet.ops.roi_align_rotated import RoIAlignRotated, roi_align_rotated
from lsknet.ops.rotated_feature_align import rotated_feature_align

__all__ = [
    "DeltaXYWHAHCoder",
    "DeltaXYWHCoder",
    "DeltaXYWHTCoder",
    "MidpointOffsetCoder",
    "RoIAlignRotated",
    "ANGLE_VERSIONS",
    "hbox_to_rbox",
    "keep_ratio_size",
    "multiclass_nms_rotated",
    "nms_rotated",
    "poly_iof",
    "poly_iou",
    "poly_to_rbox",
    "rbox_iof",
    "rbox_iou",
    "rbox_to_corners",
    "rbox_to_hbox",
    "rbox_to_tv_boxes",
    "regularize_rbox",
    "roi_align_rotated",
    "rotated_feature_align",
    "tv_boxes_to_rbox",
]
