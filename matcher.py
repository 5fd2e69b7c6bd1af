"""
The Hungarian matcher of Hugging Face's MaskFormer and Mask2Former losses, with one host wait per call.

HF's loss first matches every frame's Q predicted masks one-to-one to its K target masks (Hungarian algorithm,
scipy's linear_sum_assignment on the CPU), then supervises the matched pairs. HF's matchers loop over the frames and
copy each frame's cost matrix to the CPU as soon as it is computed: every copy makes the host wait until the device
has caught up, so a step waits once per frame, and once per frame per decoder layer with the auxiliary losses
(Mask2Former's default). As DETR's matcher does, we first queue every frame's cost matrix on the device, copy them
all to the CPU at once, and only then solve each one: one wait per call, whatever the number of frames. The costs
and the random points are HF's own (same functions, same weights, same order), so the assignments are HF's;
under autocast the costs are still float32, where HF's would be half precision.

Shapes: N = B*T frames, Q queries, L classes (+1, the null class, last), K_i target masks in frame i, K = sum K_i.
    masks_queries_logits (N, Q, h, w), class_queries_logits (N, Q, L+1)
    mask_labels: N tensors (K_i, H, W) of 0/1; class_labels: N tensors (K_i,) int64
    cost of frame i (Q, K_i) = cost_class * -p(target's class) + cost_mask * mask loss + cost_dice * dice loss,
        mask losses between every predicted and target mask: MaskFormer's focal loss on the whole masks (targets
        resized to h x w), or Mask2Former's cross entropy at num_points random points (a new set per frame)
    all costs side by side (Q, K): the one copy to the CPU, then split back into the N (Q, K_i) there
Returns N pairs (query indices, target indices), int64 (min(Q, K_i),) each, as HF's matcher does, but on the
logits' device: HF's loss indexes device tensors with them, and CPU indices would be copied there one frame at a time.

    install(model)  # model: MaskFormerForInstanceSegmentation or Mask2FormerForUniversalSegmentation
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from transformers.models.mask2former.modeling_mask2former import pair_wise_sigmoid_cross_entropy_loss, sample_point
from transformers.models.maskformer.modeling_maskformer import pair_wise_dice_loss, pair_wise_sigmoid_focal_loss

from qshift import to_device


class HungarianMatcher(nn.Module):
    """HF's matcher (same arguments, same result) with one host wait per call. num_points None: MaskFormer's costs
    (whole masks, focal loss); a number: Mask2Former's (that many random points per frame, cross entropy)."""

    def __init__(self, cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=None):
        super().__init__()  # a module: HF's loss holds its matcher as a submodule
        self.cost_class, self.cost_mask, self.cost_dice, self.num_points = cost_class, cost_mask, cost_dice, num_points

    def frame_cost(self, class_logits, mask_logits, labels, targets):
        """One frame's cost matrix (Q, K_i), as HF computes it: class_logits (Q, L+1), mask_logits (Q, h, w),
        labels (K_i,), targets (K_i, H, W), all float32. It stays on the device: nothing here waits."""
        cost_class = -class_logits.softmax(-1)[:, labels]  # 1 - p(class), less the 1 that changes no assignment
        if self.num_points is None:  # MaskFormer: every pixel at the predictions' size
            preds = mask_logits.flatten(1)  # (Q, h*w)
            targets = F.interpolate(targets[:, None], size=mask_logits.shape[-2:], mode="nearest").flatten(1)
            cost_mask = pair_wise_sigmoid_focal_loss(preds, targets)
        else:  # Mask2Former: the same P random points in every mask; drawn as HF draws them, one set per frame
            points = torch.rand(1, self.num_points, 2, device=mask_logits.device)  # (1, P, 2) in [0, 1]^2
            targets = sample_point(targets[:, None], points.repeat(len(targets), 1, 1), align_corners=False)[:, 0]
            preds = sample_point(mask_logits[:, None], points.repeat(len(mask_logits), 1, 1), align_corners=False)[:, 0]
            cost_mask = pair_wise_sigmoid_cross_entropy_loss(preds, targets)  # preds (Q, P), targets (K_i, P)
        cost_dice = pair_wise_dice_loss(preds, targets)
        cost = self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice  # HF's order
        big = torch.finfo(cost.dtype).max  # NaN or inf (a diverged model) becomes the worst finite cost, as in HF
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)

    @torch.no_grad()
    def forward(self, masks_queries_logits, class_queries_logits, mask_labels, class_labels):
        # float32 costs, autocast off (as the original Mask2Former's matcher): in fp16 a confident mask's focal cost
        # overflows to inf, every such candidate then costs the same and the assignment changes; bf16 rounds some apart
        with torch.autocast(masks_queries_logits.device.type, enabled=False):
            frames = zip(class_queries_logits.float(), masks_queries_logits.float(), class_labels,
                         [targets.float() for targets in mask_labels])
            costs = [self.frame_cost(*frame) for frame in frames]  # N x (Q, K_i), queued on the device
        sizes = [cost.shape[1] for cost in costs]
        costs = torch.cat(costs, dim=1).cpu()  # (Q, K): the call's one wait for the device
        pairs = [linear_sum_assignment(cost) for cost in costs.split(sizes, dim=1)]  # N x (rows, cols), CPU
        # every pair back to the device in one copy, which does not wait: (2, sum of min(Q, K_i)) int64
        matched = torch.from_numpy(np.concatenate([np.stack(pair) for pair in pairs], axis=1).astype(np.int64))
        matched = to_device(matched, masks_queries_logits.device)
        return [tuple(pair) for pair in matched.split([len(rows) for rows, _ in pairs], dim=1)]


def install(model):
    """Replace HF's matcher in model's loss (model.criterion.matcher) with a HungarianMatcher of the same costs and
    weights. model: an HF MaskFormerForInstanceSegmentation or Mask2FormerForUniversalSegmentation (a
    QShiftSegmenter's .model). Returns model."""
    hf = model.criterion.matcher
    ours = HungarianMatcher(hf.cost_class, hf.cost_mask, hf.cost_dice, getattr(hf, "num_points", None))
    model.criterion.matcher = ours
    if hasattr(model, "matcher"):  # MaskFormer also keeps it as model.matcher: keep the two the same
        model.matcher = ours
    return model
