"""adrec-stream: streaming, incremental sequential recommendation with ADRec.

ADRec: Chen, Xu, Jiang, "Unlocking the Power of Diffusion Models in Sequential
Recommendation: A Simple and Effective Approach", KDD 2025 (arXiv 2505.19544).
"""

__version__ = "0.1.0"
