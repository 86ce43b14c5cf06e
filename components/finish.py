from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finish_run(config: str, run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: close the MLflow parent run with the pipeline's final status."""
    from expo import stages

    stages.finish_run(config, status.state, run_id)
