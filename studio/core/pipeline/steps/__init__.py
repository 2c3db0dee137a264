"""One module per step (see ``studio.core.pipeline.step``); ``registry`` lists them in order."""
