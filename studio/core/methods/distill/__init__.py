"""Knowledge distillation as a loss for the shared training loop.

Logit KD (temperature, alpha), feature KD between layer pairs with learned projections, relation
KD (RKD), several teachers, self-distillation from a frozen copy of the uncompressed model, and
output matching for recovery without labels.
"""

from studio.core.methods.distill.distiller import (
    FeaturePair,
    KDConfig,
    KDLoss,
    KDSetup,
    default_teacher,
    freeze,
    make_kd_loss,
    training_parameters,
)
from studio.core.methods.distill.evaluate import TeacherAgreement, teacher_agreement
from studio.core.methods.distill.features import FeatureCapture, find_modules
from studio.core.methods.distill.losses import (
    align_features,
    distillation_loss,
    feature_kd_loss,
    logit_kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    soft_targets,
)
from studio.core.methods.distill.matching import (
    OutputMatchingLoss,
    matching_kind,
    output_matching_loss,
)
from studio.core.methods.distill.projection import FeatureProjector
from studio.core.methods.distill.stage import distill

__all__ = [
    "FeatureCapture",
    "FeaturePair",
    "FeatureProjector",
    "KDConfig",
    "KDLoss",
    "KDSetup",
    "OutputMatchingLoss",
    "TeacherAgreement",
    "align_features",
    "default_teacher",
    "distill",
    "distillation_loss",
    "feature_kd_loss",
    "find_modules",
    "freeze",
    "logit_kd_loss",
    "make_kd_loss",
    "matching_kind",
    "output_matching_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "soft_targets",
    "teacher_agreement",
    "training_parameters",
]
