"""The commands: SLURM (submitit) launches of the chain pretrain -> evaluate, and the tools' entry points.

The last stage of the package: it imports every other stage, and nothing in the package imports it.
`launchers/*.py` and `tools/*.py` are the commands users type; each calls a `main` here, and `setup.py`
installs the same functions as console scripts (`dinov3us-...`).

    python launchers/submit_pretrain.py --nodes 4 --gpus-per-node 8 --config-file CFG --output-dir OUT
    python launchers/submit_eval.py --weights OUT/teacher.pth --dataset data/fpdb_brain --output-dir OUT/eval
    python launchers/status.py OUT [--wait]

Launches: `submit_pretrain`, `submit_eval` and `status` are the three launcher commands; `cluster` holds
the command-line options, cluster detection and submitit executors they share, `plan` the checks made
before anything is submitted and the job chain, `execute` the dry run, submission and local run,
`local_controller` the local jobs' controller process, `stages` the callables that run inside the jobs
(each calls its stage's Python entry point: `pretrain`, `convert_checkpoint`, `evaluate`; submitit
pickles them, so they live here, importable wherever the package is installed), and `jobs` the
`OUT/jobs.json` bookkeeping and the watcher. Paths of a run folder come from `dinov3_us.run_dir.RunDir`.

Tools: `cli_build_dataset`, `cli_convert`, `cli_compare` and `cli_eval` (the four evaluation commands).
`argtypes` holds the argparse types of the options that are not config keys.
"""
