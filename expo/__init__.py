"""ExPO: self-explanation-guided reinforcement learning, as a KFP pipeline.

The library (this package) holds every stage's logic and imports no kfp; `components/` wrap the
stages as KFP components and `pipelines/` wire them into the DAG. See README.md.
"""

__version__ = "0.1.0"
