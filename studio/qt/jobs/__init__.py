"""Background jobs in the GUI: runners (child process or thread), a table model and a panel."""

from studio.qt.jobs.model import JobRow, JobsModel
from studio.qt.jobs.panel import JobsPanel, ProgressDelegate, available_devices
from studio.qt.jobs.runner import CANCELLED, FAILED, FINISHED, JobHandle, ProcessJob, ThreadJob

__all__ = ["CANCELLED", "FAILED", "FINISHED", "JobHandle", "JobRow", "JobsModel", "JobsPanel",
           "ProcessJob", "ProgressDelegate", "ThreadJob", "available_devices"]
