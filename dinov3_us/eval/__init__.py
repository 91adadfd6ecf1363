"""Evaluation of frozen or fine-tuned backbones: linear probe, kNN, fine-tuning, dense probe, metrics, reports.

Command-line entry points: `tools/eval_linear.py`, `tools/eval_knn.py`, `tools/eval_finetune.py`,
`tools/eval_segmentation.py`, `tools/compare_results.py`.
"""
