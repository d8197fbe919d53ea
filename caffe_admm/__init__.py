"""caffe-admm: StructADMM structured pruning for Caffe models.

Zhang et al., "StructADMM: A Systematic, High-Efficiency Framework of
Structured Weight Pruning for DNNs" (arXiv 1807.11091). The numerical core
(:mod:`caffe_admm.projections`, :mod:`caffe_admm.masks`,
:mod:`caffe_admm.admm`) is free of Caffe; the modules that drive Caffe import
it through :mod:`caffe_admm.backend`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
