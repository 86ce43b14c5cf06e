from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(config: str, name: str, model: Input[Model], data: Input[Dataset],
             results: Output[Dataset], metrics: Output[Metrics], params: str = ""):
    """Verifier-based pass@1 / pass@k / greedy accuracy by level on the held-out split (and the test set)."""
    from expo import stages
    from expo.io import write_json

    values = stages.evaluate(config, name, model.path, data.path, results.path, params)
    for key, value in values.items():
        metrics.log_metric(key, value)
    write_json(metrics.path, values)
