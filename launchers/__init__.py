"""SLURM (submitit) launchers: pretrain -> convert -> evaluate as a chain of jobs, or the same chain locally.

    python launchers/submit_pretrain.py --nodes 4 --gpus-per-node 8 --config-file CFG --output-dir OUT
    python launchers/submit_eval.py --weights OUT/teacher.pth --dataset data/fpdb_brain --output-dir OUT/eval
    python launchers/status.py OUT [--wait]

`common` holds the command-line options, cluster detection and submitit executors shared by both
launchers, `plan` the checks made before anything is submitted and the job chain, `launch` the
dry run, submission and local run, `stages` the callables that run inside the jobs (each calls its
stage's Python entry point: `pretrain`, `convert_checkpoint`, `evaluate`), and `jobs` the
`OUT/jobs.json` bookkeeping and the watcher. Paths of a run folder come from `dinov3_us.run_dir.RunDir`.
"""
