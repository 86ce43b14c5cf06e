from typing import List

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(config: str, run_key: str, base_eval: Input[Dataset], arm_evals: Input[List[Dataset]],
           trained: Input[List[Model]], explanations: Input[Dataset], summary: Output[Dataset],
           best_model: Output[Model], page: Output[HTML], markdown: Output[Markdown], metrics: Output[Metrics],
           params: str = "") -> str:
    """Compare base and arms, write the HTML/Markdown report; return the arm that earned registration
    ("" when no arm beat the base model). A single return value: kfp.local resolves `dsl.If` only on
    a task's `Output`, not on named outputs."""
    import shutil
    from pathlib import Path

    from expo import stages
    from expo.io import write_json

    result = stages.report(config, run_key, base_eval.path, [a.path for a in arm_evals], [t.path for t in trained],
                           explanations.path, summary.path, best_model.path, params)
    best_model.metadata["arm"] = result["best_arm"]
    shutil.copyfile(Path(summary.path) / "report.html", page.path)
    shutil.copyfile(Path(summary.path) / "report.md", markdown.path)
    values = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key, value in values.items():
        metrics.log_metric(key, value)
    write_json(metrics.path, values)
    return result["best_arm"] if result["register"] else ""
