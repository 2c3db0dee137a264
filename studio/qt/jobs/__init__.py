"""Background jobs in the GUI: runners (child process or thread), a table model and a panel."""

from studio.qt.jobs.runner import CANCELLED, FAILED, FINISHED, JobHandle, ProcessJob, ThreadJob

__all__ = ["CANCELLED", "FAILED", "FINISHED", "JobHandle", "ProcessJob", "ThreadJob"]
