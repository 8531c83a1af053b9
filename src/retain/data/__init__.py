"""Tasks: training examples plus the objective that turns a model's output into a loss."""

from retain.data.task_heads import TaskHeads as TaskHeads
from retain.data.text import TextClassificationTask as TextClassificationTask
from retain.data.text import causal_lm_task as causal_lm_task
from retain.data.text import text_classification_task as text_classification_task
