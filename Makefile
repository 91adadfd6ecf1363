# dinov3_us — the two commands users need: `make demo` and `make test`.
# Every install step lives here; both targets install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned only where the venv cannot already import torch >= 2.6 (a cluster module or a
# system CUDA build, visible through --system-site-packages, is kept as it is).
TORCH_PIN ?= torch==2.13.0

# make demo: phantom shards -> small-data pretraining (2 CPU processes; it writes the teacher) -> linear probe + kNN, each
# also on a random initialisation of the same architecture (paired difference, chance level), through the same
# launcher as a cluster run (--cluster local). make demo-real: the same on HC18 from ../shared/data.
# The recipe is configs/train/small_cpu.yaml (the small-data knobs; docs/selfdistill_onset.md)
# at a global batch of 16 (2 processes x 8), 100-iteration epochs, with the teacher temperature that adapts
# (teacher.temp_control=auto: at this budget the fixed 0.01 leaves the DINO loss at ln K on the phantom;
# docs/demo.md); the self-distillation alarm after 60 stalled iterations past the warm-up, so that a demo that
# does not learn says so. The phantom: DEMO_SAMPLES images, half of them the labelled brain planes.
DEMO_DIR ?= runs/demo
DEMO_REAL_DIR ?= runs/demo-real
HC18 ?= ../shared/data/hc18
DEMO_ITERATIONS ?= 300
DEMO_SAMPLES ?= 1200
DEMO_EXTRA ?=
DEMO_REAL_ITERATIONS ?= 600
DEMO_LAUNCH = $(PY) launchers/submit_pretrain.py --cluster local --nodes 1 --gpus-per-node 2 \
	--config-file configs/train/small_cpu.yaml train.batch_size_per_gpu=8 train.OFFICIAL_EPOCH_LENGTH=100 \
	checkpointing.period=100 evaluation.eval_period_iterations=0 train.selfdistill_alarm_iterations=60

.PHONY: install demo demo-real test test-fast lint clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv --system-site-packages $(VENV)
	@if $(PY) -c "import sys, torch; v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(0 if v >= (2, 6) else 1)" 2>/dev/null; then \
		echo "keeping the installed torch: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
		$(PY) -m pip install -q -e ".[test]"; \
	else \
		$(PY) -m pip install -q "$(TORCH_PIN)" -e ".[test]"; \
	fi
	# timm without its dependencies: its torchvision would replace a CPU torch with a CUDA build, and the DINOv3
	# models do not use it (tests/interop/test_timm.py stands in for the names timm imports; see there)
	$(PY) -m pip install -q --no-deps "timm==1.0.31"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) tools/build_dataset.py --source phantom --num-samples $(DEMO_SAMPLES) --out $(DEMO_DIR)/data --no-progress
	$(DEMO_LAUNCH) --output-dir $(DEMO_DIR)/pretrain train.dataset_path=$(DEMO_DIR)/data:train,unlabelled \
		optim.epochs=$$(($(DEMO_ITERATIONS) / 100)) teacher.temp_control=auto $(DEMO_EXTRA)

# HC18 has no class labels: `--task hc-terciles` labels the head circumference in terciles (small / medium /
# large head, edges from the train split), which the linear probe and kNN must read off the frozen features.
demo-real: install
	@test -d $(HC18) || { echo "make demo-real needs HC18 in $(HC18) (Zenodo 1327317); try make demo"; exit 2; }
	$(PY) tools/build_dataset.py --source hc18 --task hc-terciles --root $(HC18) --out $(DEMO_REAL_DIR)/data \
		--workers 2 --no-progress
	$(DEMO_LAUNCH) --output-dir $(DEMO_REAL_DIR)/pretrain train.dataset_path=$(DEMO_REAL_DIR)/data:train,unlabelled \
		optim.epochs=$$(($(DEMO_REAL_ITERATIONS) / 100))

# The SLURM tests (tests/launchers, marked slurm) run on a local two-node cluster that this starts and,
# through a trap, always stops (launchers/with_local_slurm.sh); without it they skip, saying why. The 25 slowest
# tests are listed at the end: the suite's budget is 20 minutes on 2 cores.
test: install
	$(PY) -m ruff check .
	bash launchers/with_local_slurm.sh $(PY) -m pytest -q --durations=25 tests

# make test-fast: the unit tests only, for the edit-test loop (budget: two minutes on 2 cores). It leaves out what is
# marked slow (over 5 s: subprocess and multi-process trainings, real data, torch.compile, the bench scripts) or
# slurm; tests/README.md says what each mark means. make test, which runs everything, stays the check before a merge.
test-fast: install
	$(PY) -m pytest -q -m "not slow and not slurm" tests

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
