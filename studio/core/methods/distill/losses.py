"""Distillation losses as plain tensor functions: logit KD, feature KD, relation KD (RKD).

They take tensors, not models, so each is testable on its own and the distiller only wires them
to captured outputs. Work is done in float32 so a half-precision student does not underflow the
softened probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _rows(logits: Tensor) -> Tensor:
    """Logits of any leading shape (N, C) or (N, L, C) as rows of classes (the last dim)."""
    return logits.float().reshape(-1, logits.shape[-1])


def soft_targets(teacher_logits: Sequence[Tensor], temperature: float,
                 weights: Sequence[float] | None = None) -> Tensor:
    """Weighted average of the teachers' temperature-softened probabilities.

    Averaging probabilities (not logits) is the usual multi-teacher ensemble: one confident
    teacher cannot dominate through logit scale alone. Weights are normalised to sum to one.
    """
    if not teacher_logits:
        raise ValueError("soft_targets needs at least one teacher's logits")
    if weights is None:
        weights = [1.0] * len(teacher_logits)
    if len(weights) != len(teacher_logits):
        raise ValueError(f"{len(weights)} teacher weights for {len(teacher_logits)} teachers")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"teacher weights must be non-negative and not all zero: {weights}")
    probs = [F.softmax(_rows(t) / temperature, dim=-1) * (w / total)
             for t, w in zip(teacher_logits, weights, strict=True)]
    return torch.stack(probs).sum(0)


def confidence_soft_targets(teacher_logits: Sequence[Tensor], temperature: float,
                            weights: Sequence[float] | None = None) -> Tensor:
    """Like :func:`soft_targets`, but each sample trusts each teacher in proportion to its
    weight times its confidence there (top-1 probability at temperature 1), so a teacher that
    is unsure about a sample gives way to one that is sure (confidence-aware multi-teacher KD).
    """
    if not teacher_logits:
        raise ValueError("soft_targets needs at least one teacher's logits")
    base = torch.as_tensor(list(weights) if weights is not None else [1.0] * len(teacher_logits),
                           dtype=torch.float32, device=teacher_logits[0].device)
    if len(base) != len(teacher_logits):
        raise ValueError(f"{len(base)} teacher weights for {len(teacher_logits)} teachers")
    rows = [_rows(t) for t in teacher_logits]
    confidence = torch.stack([F.softmax(r, dim=-1).amax(-1) for r in rows])  # teachers x N
    share = base[:, None] * confidence
    share = share / share.sum(0, keepdim=True).clamp_min(1e-12)
    probs = torch.stack([F.softmax(r / temperature, dim=-1) for r in rows])
    return (probs * share[..., None]).sum(0)


def logit_kd_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) on softened distributions, times T².

    The T² factor keeps the gradient magnitude of the soft term roughly independent of the
    temperature (Hinton et al. 2015), so ``alpha`` means the same thing at any T.
    """
    log_q = F.log_softmax(_rows(student_logits) / temperature, dim=-1)
    target = teacher_probs.float().reshape(log_q.shape)
    return F.kl_div(log_q, target, reduction="batchmean") * temperature * temperature


def decoupled_kd_loss(student_logits: Tensor, teacher_probs: Tensor, targets: Tensor,
                      temperature: float, target_weight: float = 1.0,
                      nontarget_weight: float = 8.0) -> Tensor:
    """Decoupled KD (DKD, Zhao et al. CVPR 2022): ``target_weight * TCKD + nontarget_weight *
    NCKD``, each times T².

    Classic KD is TCKD + (1 - p_target) * NCKD, so a near one-hot teacher (p_target ~ 1)
    silences its own ranking of the wrong classes. DKD weighs the two apart: TCKD is the KL
    between the binary (target, rest) splits of both distributions; NCKD is the KL between the
    distributions over the non-target classes alone, each renormalised there, so it still
    carries the teacher's dark knowledge however sure it is. ``teacher_probs`` are softened
    probabilities (from :func:`soft_targets`), ``targets`` one class per row.
    """
    rows = _rows(student_logits) / temperature
    probs = teacher_probs.float().reshape(rows.shape)
    flat = targets.reshape(-1)
    if flat.shape[0] != rows.shape[0]:
        raise ValueError(f"{flat.shape[0]} targets for {rows.shape[0]} rows of logits")
    is_target = F.one_hot(flat, rows.shape[-1]).bool()
    log_q = F.log_softmax(rows, dim=-1)
    log_q_binary = torch.stack([log_q[is_target],
                                log_q.masked_fill(is_target, float("-inf")).logsumexp(-1)], -1)
    p_target = probs[is_target]
    p_binary = torch.stack([p_target, (1.0 - p_target).clamp_min(0.0)], -1)
    tckd = F.kl_div(log_q_binary, p_binary, reduction="batchmean")
    others = rows.shape[-1] - 1
    p_rest = probs[~is_target].reshape(-1, others)
    p_rest = p_rest / p_rest.sum(-1, keepdim=True).clamp_min(torch.finfo(p_rest.dtype).tiny)
    log_q_rest = F.log_softmax(rows[~is_target].reshape(-1, others), dim=-1)
    nckd = F.kl_div(log_q_rest, p_rest, reduction="batchmean")
    return (target_weight * tckd + nontarget_weight * nckd) * temperature * temperature


def distillation_loss(student_logits: Tensor, teacher_probs: Tensor, labels: Tensor | None,
                      temperature: float, alpha: float,
                      decoupled: tuple[float, float] | None = None) -> Tensor:
    """``alpha * KD + (1 - alpha) * CE``; KD alone where there are no labels.

    Labels that are ``None``, or negative (the convention for unlabelled samples), are left out
    of the cross entropy; a batch without any label is pure KD, so distillation also works on
    unlabelled data. ``decoupled`` (TCKD weight, NCKD weight) makes KD the decoupled loss
    (:func:`decoupled_kd_loss`), whose target class is the label, or the teacher's top class
    where there is none.
    """
    if decoupled is None:
        kd = logit_kd_loss(student_logits, teacher_probs, temperature)
    else:
        targets = teacher_probs.reshape(-1, teacher_probs.shape[-1]).argmax(-1)
        if labels is not None:
            given = labels.reshape(-1)
            targets = torch.where(given >= 0, given, targets) if (
                given.shape == targets.shape) else targets
        kd = decoupled_kd_loss(student_logits, teacher_probs, targets, temperature, *decoupled)
    if labels is None or alpha >= 1.0:
        return kd
    rows = _rows(student_logits)
    flat = labels.reshape(-1)
    if flat.shape[0] != rows.shape[0]:
        raise ValueError(f"{flat.shape[0]} labels for {rows.shape[0]} rows of logits")
    known = flat >= 0
    if not bool(known.any()):
        return kd
    ce = F.cross_entropy(rows[known], flat[known])
    return alpha * kd + (1.0 - alpha) * ce


def align_features(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Pool both features to the smaller spatial (4-D) or sequence (3-D, N x L x C) size.

    Adaptive average pooling lets a student that downsamples earlier or later than its teacher
    still be matched, without learning an upsampler.
    """
    if student.dim() == 4 and student.shape[2:] != teacher.shape[2:]:
        size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
        return F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)
    if student.dim() == 3 and student.shape[1] != teacher.shape[1]:
        length = min(student.shape[1], teacher.shape[1])

        def pool(x: Tensor) -> Tensor:
            return F.adaptive_avg_pool1d(x.transpose(1, 2), length).transpose(1, 2)

        return pool(student), pool(teacher)
    return student, teacher


def feature_kd_loss(student: Tensor, teacher: Tensor,
                    projection: nn.Module | None = None) -> Tensor:
    """MSE between a (projected) student feature and the teacher's, sizes aligned first.

    The teacher side is detached: only the student and its projection learn.
    """
    if projection is not None:
        student = projection(student)
    student, target = align_features(student.float(), teacher.detach().float())
    if student.shape != target.shape:
        raise ValueError(f"student feature {tuple(student.shape)} does not match teacher "
                         f"feature {tuple(target.shape)}; a projection is needed")
    return F.mse_loss(student, target)


def _normalised_distances(embeddings: Tensor) -> Tensor:
    """Pairwise Euclidean distances divided by their mean over distinct pairs."""
    e = embeddings.float().flatten(1)
    squared = e.pow(2).sum(1)
    gram = e @ e.t()
    dist = (squared.unsqueeze(0) + squared.unsqueeze(1) - 2 * gram).clamp_min(1e-12).sqrt()
    n = e.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=e.device)
    dist = dist * off
    mean = dist.sum() / (n * (n - 1))
    return dist / mean.clamp_min(1e-12)


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD distance loss (Park et al. 2019): match the batch's normalised distance structure.

    Distances are divided by their mean, so the loss ignores a global scale of either side and
    the two embeddings may have different widths.
    """
    n = student.shape[0]
    if n < 2:
        return student.float().sum() * 0.0
    with torch.no_grad():
        target = _normalised_distances(teacher)
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    return F.smooth_l1_loss(_normalised_distances(student)[off], target[off])


def _angles(embeddings: Tensor) -> Tensor:
    e = embeddings.float().flatten(1)
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle loss: match the cosines of angles formed by every triplet in the batch.

    Costs N³ memory in the batch size N; scale-invariant like the distance loss.
    """
    if student.shape[0] < 3:
        return student.float().sum() * 0.0
    with torch.no_grad():
        target = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), target)
