"""The job protocol: a job is a generator of events that checks a cancel token at every batch."""

from studio.core.jobs.cancel import CancelToken, JobCancelled
from studio.core.jobs.events import Artifact, Event, Log, Metric, Progress, Result

__all__ = ["Artifact", "CancelToken", "Event", "JobCancelled", "Log", "Metric", "Progress",
           "Result"]
