"""Tasks: training examples plus the objective that turns a model's output into a loss."""
