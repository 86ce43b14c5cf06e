"""KFP components: one thin `@dsl.component` per stage, each a single call into `expo.stages`.

All components run in the project image (`IMAGE`, from $EXPO_IMAGE at import time) and install
nothing at run time, so the pipeline runs the exact code that was tested.
"""

from components.evaluate import evaluate
from components.explain import generate_explanations
from components.finish import finish_run
from components.prepare_data import prepare_data
from components.prepare_model import prepare_model
from components.register import register
from components.report import report
from components.train import train

__all__ = ["prepare_data", "prepare_model", "evaluate", "generate_explanations", "train", "report",
           "register", "finish_run"]
