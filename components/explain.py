from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def generate_explanations(config: str, data: Input[Dataset], model: Input[Model],
                          explanations: Output[Dataset], metrics: Output[Metrics], params: str = ""):
    """Sample answer-conditioned self-explanations and keep the ones that verify."""
    from expo import stages
    from expo.io import write_json

    values = stages.generate_explanations(config, data.path, model.path, explanations.path, params)
    for key, value in values.items():
        metrics.log_metric(key, value)
    write_json(metrics.path, values)
