from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_data(config: str, data: Output[Dataset], metrics: Output[Metrics], params: str = ""):
    """Load, normalise, dedupe and split the problems (train.jsonl, eval.jsonl, stats.json)."""
    from expo import stages
    from expo.io import write_json

    values = stages.prepare_data(config, data.path, params)
    for key, value in values.items():
        metrics.log_metric(key, value)
    write_json(metrics.path, values)  # an unwritten Metrics file is never a kfp.local cache hit
