from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(config: str, arm: str, data: Input[Dataset], model: Input[Model], explanations: Input[Dataset],
          trained: Output[Model], metrics: Output[Metrics], params: str = ""):
    """Train one arm (exp-grpo, grpo, grpo-sft, exp-dpo, sdft); the model lands in trained/model."""
    from expo import stages
    from expo.io import write_json

    values = stages.train(config, arm, data.path, model.path, explanations.path, trained.path, params)
    trained.metadata["arm"] = arm
    for key, value in values.items():
        metrics.log_metric(key, value)
    write_json(metrics.path, values)
