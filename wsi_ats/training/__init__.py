"""Training: attention-sampling steps with background tile reads, validation AUC, checkpoints."""

from wsi_ats.training.data import LabelledSlide, SlideStore, read_cohort, split_cohort
from wsi_ats.training.loop import RunExistsError, TrainResult, evaluate, safe_auc, train
from wsi_ats.training.step import plan_batch, train_step

__all__ = [
    "LabelledSlide",
    "RunExistsError",
    "SlideStore",
    "TrainResult",
    "evaluate",
    "plan_batch",
    "read_cohort",
    "safe_auc",
    "split_cohort",
    "train",
    "train_step",
]
