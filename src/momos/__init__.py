"""momos: Mosaic-of-Motifs for PyTorch.

    import momos
    cfg = momos.MoMosConfig(block_size=4, capacity=0.01, seed=0)
    stats = momos.project_(model, cfg)
"""

from .batchnorm import reestimate_batchnorm_
from .blocks import BlockLayout, from_blocks, to_blocks
from .compact import compact_, dense_
from .config import MoMosConfig
from .cost import CostEstimate
from .fileformat import FormatError, load, save
from .finetune import FinetuneConfig, FinetuneResult, finetune
from .onnx import export_onnx
from .project import Codebook, ProjectionStats, estimate_cost, is_mosaic, project_, select_parameters, warn_if_slow
from .projector import Projector
from .qat import QATConfig, add_qat_, remove_qat_

__version__ = "0.1.0"

__all__ = [
    "BlockLayout", "Codebook", "CostEstimate", "FinetuneConfig", "FinetuneResult", "FormatError", "MoMosConfig", "ProjectionStats", "Projector", "QATConfig",
    "add_qat_", "compact_", "dense_", "estimate_cost", "export_onnx", "finetune", "from_blocks", "is_mosaic", "load", "project_", "reestimate_batchnorm_", "remove_qat_", "save", "select_parameters",
    "to_blocks", "warn_if_slow", "__version__",
]
