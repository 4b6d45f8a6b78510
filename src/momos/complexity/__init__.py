"""Measuring algorithmic complexity: generic compressors, BDM, simple statistics, and the
exact description length of a mosaic.

    from momos.complexity import measure
    measure(model, ["gzip", "lzma", "bdm", "entropy"])
    measure(model, ["mosaic"], config)          # description lengths and simplification factors
    measure(model, ["mosaic"], config, scales=stats.scales)   # of a normalized mosaic
"""

from .block_decomposition import BDM_ALPHABETS, bdm, bdm_per_bit, quantize_levels
from .compressors import (COMPRESSORS, FAST_COMPRESSORS, FAST_SETTINGS, WINDOW_BYTES,
                          compressed_sizes, window_warning)
from .description import (QUANTIZATION_BITS, SCALE_BITS, CodebookUsage, DescriptionLength,
                          description_length, description_length_from_config,
                          description_length_from_stats, description_length_of_codebooks,
                          description_length_of_weights, mosaic_codebooks, num_quantized)
from .measure import (BDM_METRICS, COMPRESSOR_METRICS, DEFAULT_METRICS, METRICS,
                      CompressorWindowWarning, bdm_of_weights, check_metrics, compression,
                      empirical_entropy, generic_sizes, l2_norm, measure, measured_tensors, payload_bytes,
                      sparsity)

__all__ = [
    "BDM_ALPHABETS", "BDM_METRICS", "COMPRESSORS", "COMPRESSOR_METRICS", "CodebookUsage",
    "CompressorWindowWarning", "DEFAULT_METRICS", "DescriptionLength", "FAST_COMPRESSORS",
    "FAST_SETTINGS", "METRICS", "QUANTIZATION_BITS", "SCALE_BITS", "WINDOW_BYTES", "bdm",
    "bdm_of_weights", "bdm_per_bit", "check_metrics", "compressed_sizes", "compression",
    "description_length", "description_length_from_config", "description_length_from_stats",
    "description_length_of_codebooks", "description_length_of_weights", "empirical_entropy", "generic_sizes",
    "l2_norm", "measure", "measured_tensors", "mosaic_codebooks", "num_quantized", "payload_bytes",
    "quantize_levels", "sparsity", "window_warning",
]
