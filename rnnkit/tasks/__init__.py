"""The tasks: the one list of them.

Each task is one module that declares its data config, model config, defaults, model,
metrics and output formats in a :class:`rnnkit.tasks.recipe.TaskSpec` (``SPEC``); one
recipe (:func:`rnnkit.tasks.recipe.train`) trains any of them, and the command line makes
``rnnkit train TASK`` and its options of these declarations. Adding a task is one module
and one entry below.
"""

from rnnkit.tasks import (captioner, classifier, conditioned_lm, lm, recognizer, tagger,
                          translator)
from rnnkit.tasks.recipe import TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    lm.SPEC, classifier.SPEC, tagger.SPEC, translator.SPEC, conditioned_lm.SPEC,
    recognizer.SPEC, captioner.SPEC)}


def task_spec(name: str) -> TaskSpec:
    """The task called ``name`` (as in run.json and config.json)."""
    if name not in TASKS:
        raise ValueError(f"task: unknown {name!r}; expected one of {list(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "TaskSpec", "task_spec"]
