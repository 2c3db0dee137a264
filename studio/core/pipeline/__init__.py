"""One pipeline for every run: a backend (torch or ONNX-only) opens the model and the data and
measures files; registered steps (``registry``) change the working model in order; the pipeline
(``pipeline``) measures the baseline, times both files and writes the report, once for all."""
