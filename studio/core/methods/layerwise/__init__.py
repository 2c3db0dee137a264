"""Layer-wise compression of transformers from calibration activations: the block-by-block
driver (``blocks``), input statistics (``stats``), SparseGPT and Wanda pruning
(``sparsegpt``, ``wanda``) and round-to-nearest / GPTQ weight quantization (``quantize``)."""
