from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(config: str, run_key: str, arm: str, model: Input[Model], summary: Input[Dataset],
             params: str = "") -> str:
    """Register the best arm's model in MLflow (alias `candidate`) and run the champion gate."""
    from expo import stages

    result = stages.register(config, run_key, arm, model.path, summary.path, params)
    return result["uri"]
