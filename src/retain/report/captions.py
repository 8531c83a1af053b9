"""What the run and comparison reports call things: each figure's caption, by the figure's name,
and each summary figure's label and number format."""

from __future__ import annotations

__all__ = ["CAPTIONS", "SUMMARY_LABELS", "summary_format"]

#: What each figure shows, by the names of :data:`~retain.report.plots.RUN_FIGURES`,
#: :data:`~retain.report.plots.RUN_DIAGNOSTIC_FIGURES` and
#: :data:`~retain.report.comparison_plots.COMPARISON_FIGURES`.
CAPTIONS = {
    "score_matrix": "Score matrix R[t][i]: the score on task i (column) after training task t "
    "(row). The diagonal is each task right after it was learned; values below it falling "
    "along a column are forgetting.",
    "task_curves": "Score of every task after each training stage; stage 0 is the model before "
    "any training. The ring marks the stage where the task itself was trained.",
    "degradation": "Relative degradation of each watched capability (positive = worse than the "
    "start) over global optimizer steps, the worst one in black; red dashed: the monitor's "
    "budget; x: where the monitor stopped a task, with its reason; dashed verticals: task "
    "boundaries. Without a monitor: the suite's degradation after each task.",
    "loss": "Training loss per optimizer step over the whole sequence (global steps); from 100 "
    "steps on, also its mean over every 1/50 of the steps (the darker line); dashed verticals: "
    "task boundaries.",
    "budget": "Forgetting budget controller: the penalty strength it set (top) and the worst "
    "relative degradation it measured (bottom) against the budget (red dashed).",
    "drift": "Relative drift ||θ_t − θ_0|| / ||θ_0|| of each layer's parameters from the "
    "starting model, after each task.",
    "layer_lrs": "Learning rate of each parameter group (layer-wise learning rates).",
    "unfreezing": "Gradual unfreezing: number of trainable blocks over global steps, per task.",
    "interference": "Gradient interference during training: every measured optimizer step, the "
    "cosine <g_step, g_prior> / (||g_step|| ||g_prior||) between the step's gradient and the "
    "prior capability's gradient on a fixed reference sample (dimensionless, -1 to 1), and (from "
    "8 measurements on) its moving average. Below zero (red) the step raised the prior loss to "
    "first order: the gradients conflict. Dashed verticals: task boundaries.",
    "representation": "Representational shift of the final model from the reference model (the "
    "start of the run, or the model right after the first task: see the Diagnostics table): "
    "linear CKA ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F) between the two models' centred hidden "
    "states of the same tokens (the first of each sequence left out), per layer (0 = "
    "embeddings, k + 1 = output of block k); 1 = the same representation up to rotation and "
    "scale, lower = changed more.",
    "output_kl": "Output shift of the final model from the reference model on general text: "
    "histogram of the next-token KL(p_ref || q_final) = Σ_v p_v (log p_v − log q_v) per token "
    "position, in nats (red: the mean), and the tokens whose mean predicted probability rose "
    "(blue) or fell (red) the most.",
    "pareto": "Plasticity (mean new-task score, right is better) against forgetting cost (down "
    "is better) per variant, error bars = sample sd over seeds. Red stars joined by a line: the "
    "Pareto-optimal variants (no other variant is at least as good on both axes and better on "
    "one).",
    "transfer": "Backward transfer (negative = forgot) and average forgetting (positive = forgot) "
    "per variant, mean ± sample sd over seeds. The other sign means the earlier tasks got better "
    "after later training (replay and joint objectives can do that): positive BWT, negative "
    "forgetting.",
}

#: The row or column label of each summary figure (:data:`~retain.report.summary.SUMMARY_KEYS`).
SUMMARY_LABELS = {
    "new_task_score": "new-task score (mean R[t][t])",
    "average_accuracy": "average final score (ACC)",
    "backward_transfer": "backward transfer (BWT)",
    "forgetting": "average forgetting",
    "capability_degradation": "worst capability degradation (last task)",
    "seconds": "wall-clock seconds",
}


def summary_format(key: str, sd: bool = False) -> str:
    """Format of a summary figure (``sd``: of its standard deviation, unsigned, 2 digits)."""
    if key == "capability_degradation":
        return ".1%" if sd else "+.1%"
    if key == "seconds":
        return ".1f"
    return ".2g" if sd else ".4g"
