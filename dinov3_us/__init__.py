"""dinov3_us: DINOv3 self-supervised pretraining and evaluation for fetal ultrasound.

Layering. Every module and subpackage has a rank; a module imports modules of its own rank or
lower, never higher, and no two modules import each other, directly or through others (imports inside
functions and under `if TYPE_CHECKING` count too). `tests/test_layering.py` holds this table as `LAYERS`,
checks that this docstring says the same, and checks both rules on every import statement of the package.

    rank  stage                  modules / subpackages
    0     utilities              errors, log, dtypes, fileio, rendezvous, distributed
    1     the model              layers, models, loss, fsdp
    2     configuration          configs
    3     data                   data
    4     training checkpoints   checkpointer
    5     the run folder         run_dir
    6     weights files          weights
    7     pretraining            train
    8     evaluation             eval
    9     entry points           hub, launch

Data flows upwards: `data` feeds `train`, which writes DCP checkpoints (`checkpointer`) into a run folder
(`run_dir`) and backbone files (`weights`) that `eval` reads; `launch` chains the stages as jobs. A
stage that needs a later one is handed it by its caller: `train.trainer.pretrain(monitor=, report=)`
takes the downstream monitor and the run report from `tools/train.py`, which builds them from `eval`.
This root module imports nothing of the package.
"""

__version__ = "0.1.0"
