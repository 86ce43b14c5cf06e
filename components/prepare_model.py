from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_model(config: str, data: Input[Dataset], model: Output[Model], metrics: Output[Metrics],
                  params: str = ""):
    """Fetch the starting policy safely, or build and warm up the embedded tiny one."""
    from expo import stages
    from expo.io import write_json

    values = stages.prepare_model(config, data.path, model.path, params)
    for key, value in values.items():
        metrics.log_metric(key, value)
    write_json(metrics.path, values)
