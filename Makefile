# One-command entry points. Every target that needs Python depends on the virtual environment (make setup).
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Table 1 recipes (make reproduce-table1 RECIPE=...; evidence in results/evidence/, README "Table 1 recipes"):
#   paper: the paper's schedule (150k x 256, SGD lr 0.01 x0.1 at 50k/100k) with momentum 0.9 and fresh training
#          distortions, every cell, 3 seeds: the faithful reproduction (default on a GPU box)
#   fast:  the fast recipe (optim=fast budget=fast: 1/10 of the paper's samples), every cell, 3 seeds
#   quarter: the fast recipe at 1/4 of the paper's samples (budget=quarter), every cell, 3 seeds: closer to the paper
#   cpu:   the fast recipe, 1 seed, the cells that fit ~2 h on 2 CPU cores (the FCN and ST-FCN rows and CNN on R;
#          default without a GPU); the other cells show "not run" and the note under the table says where they are
#   cpu-full: the fast recipe, 1 seed, every cell (the cpu cells first, then the CNN and ST-CNN rows), two 1-thread
#          runs at a time on 2 cores; resumable (rerun the same command); results/table1_cpu_full.{md,csv,tex}. Its
#          40 cells took 31.3 h of run time summed (the table's Cost line; FC cells 1.6 h, conv cells 29.7 h,
#          mostly 1 thread beside another run; CNN TC alone 6.0 h), so ~16 h of wall time on 2 cores: beyond one
#          night in fp32 (bf16 is not the default: results/evidence/table1_cpu_bf16.md)
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
RECIPE ?= $(if $(HAS_GPU),paper,cpu)
RECIPE_ARGS_paper := optim=sgd_table1 budget=paper
RECIPE_ARGS_fast := optim=fast budget=fast
RECIPE_ARGS_quarter := optim=fast budget=quarter
RECIPE_ARGS_cpu := $(RECIPE_ARGS_fast) seed=0 model=fcn,st_fcn_aff,st_fcn_proj,st_fcn_tps
# + the one CNN cell that fits (~25 min on 2 cores: 1.27% vs the paper's 1.2); skipped when EXTRA narrows the sweep
RECIPE_CELLS_cpu := $(RECIPE_ARGS_fast) seed=0 data=mnist_r model=cnn
RECIPE_ARGS_cpu-full := $(RECIPE_ARGS_cpu)
RECIPE_CELLS_cpu-full := $(RECIPE_ARGS_fast) seed=0 model=cnn,st_cnn_aff,st_cnn_proj,st_cnn_tps
RECIPE_FOLDER_paper := sgd_table1-paper
RECIPE_FOLDER_fast := fast-fast
RECIPE_FOLDER_quarter := fast-quarter
RECIPE_FOLDER_cpu := fast-fast
RECIPE_FOLDER_cpu-full := fast-fast
# The rendered table's name (results/<name>.md) and, for the partial CPU recipe, where its unrun cells are.
TABLE_NAME_cpu-full := table1_cpu_full
TABLE_ARGS_cpu := --missing "not run" --note "This is make reproduce-table1 RECIPE=cpu (about 2 h on 2 CPU cores): \
  the fast recipe, seed 0, on the FCN and ST-FCN rows and the CNN on R. The cells marked not run are filled by \
  make reproduce-table1 RECIPE=cpu-full (every cell, seed 0, resumable; about 16 h on 2 cores; its table is \
  results/table1_cpu_full.md) or by RECIPE=paper on a GPU."
TABLE_ARGS_cpu-full := --missing "not run yet" --explain results/evidence/table1_misses.yaml --note "This is make \
  reproduce-table1 RECIPE=cpu-full: the fast recipe, seed 0, every cell, on CPU. The committed one is filled over \
  several sessions on 2-core machines, mostly 1 thread per run and two runs at a time (make table1 RECIPE=cpu-full \
  ARCHIVE=results/table1_cpu_full_runs.jsonl), so the per-cell list names each cell's CPU kernels and threads and \
  the caption every code version."
# The launcher: cpu-full trains one 1-thread run per core at once (the parallel launcher gives each job its share of
# the cores), measured 1.56x (CNN) and 1.76x (ST-CNN Aff) the conv models' training throughput of one run on both
# cores, 0.80x for the ST-FCN (results/bench/cpu_layout/, bash scripts/bench_cpu_layout.sh); the conv cells dominate
# the whole table's time. Other recipes: one run at a time.
LAUNCHER_cpu-full := parallel
LAUNCHER ?= $(or $(LAUNCHER_$(RECIPE)),local)
RUNS ?= runs
# Where make table1 writes the rendered table.
RESULTS ?= results
EXTRA ?=

.PHONY: setup lock test lint data params bench bench-transformer bench-data bench-train reproduce-table1 table1 figures clean-venv \
	evidence-table1

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==24.3.1
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

lock: $(STAMP)
	{ echo "# Every package of the environment, pinned exactly (pip freeze of a fresh \`make setup\`; Python 3.11, x86_64)."; \
	  echo "# Regenerate with \`make lock\` after changing pyproject.toml."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^stn'; } > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock

test: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

data: $(STAMP)
	$(PY) -m stn.data.make

params: $(STAMP)
	$(PY) -m stn.models.params

bench: bench-transformer bench-data bench-train

bench-transformer: $(STAMP)
	$(PY) -m stn.bench.transformer

bench-data: $(STAMP)
	$(PY) -m stn.bench.data

# Training images/s of the Table 1 models per precision (fp32 / bf16 / compile): results/bench/train_<device>.md
bench-train: $(STAMP)
	$(PY) -m stn.bench.train $(BENCH_TRAIN_ARGS)

# The GPU check (README "GPU check"): tests, short runs, kill-and-resume, throughput, concurrency and the Table 1
# projection in <= 8 minutes on one GPU, into results/bench/gpu_check_<gpu>.{md,json}. Without a GPU: a CPU rehearsal.
.PHONY: gpu-check gpu-wheels gpu-data gpu-ready
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) -m stn.gpu_check $(GPU_CHECK_ARGS)

# A GPU machine with Python 3.12 and torch but no network lacks hydra-core, omegaconf and antlr4 (wandb is not
# needed with logger=none): their pure-Python wheels, at the versions of requirements.lock, go into .whl/.
GPU_WHEEL_FLAGS := --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
lock_pin = $(shell grep -E '^$(1)==' requirements.lock)
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON_BOOT) -m pip download $(GPU_WHEEL_FLAGS) -d .whl $(call lock_pin,hydra-core) $(call lock_pin,omegaconf)
	@# antlr4-python3-runtime 4.9.3 is a source archive only on PyPI: build its (pure-Python) wheel here
	$(PYTHON_BOOT) -m pip wheel --quiet --no-deps -w .whl $(call lock_pin,antlr4-python3-runtime)

# MNIST's four .gz (md5-checked) into .gpu_data/MNIST/raw, from MNIST_SOURCE or ../shared/data.
GPU_MNIST ?= $(or $(MNIST_SOURCE),../shared/data)
gpu-data: $(STAMP)
	$(PY) -c "from stn.data.mnist import copy_from_source; copy_from_source('$(GPU_MNIST)', '.gpu_data')"

# Both, then the line to run on the GPU machine (scripts/offline_env.sh sets up python3 from the carried folders).
gpu-ready: gpu-wheels gpu-data
	@echo 'On the GPU machine, in the repository root with .whl and .gpu_data carried: bash scripts/gpu_check_offline.sh $$OUT'

# The paper's Table 1 (+ TC) from your own runs, next to the paper's numbers: results/table1.{md,csv,tex}.
reproduce-table1: $(STAMP)
	@test -n "$(RECIPE_FOLDER_$(RECIPE))" || { echo "unknown RECIPE=$(RECIPE): use paper, fast, quarter, cpu or cpu-full"; exit 2; }
	@echo "Table 1 sweep: recipe $(RECIPE) ($(RECIPE_ARGS_$(RECIPE))), launcher $(LAUNCHER), runs in $(RUNS)/table1"
	$(PY) -m stn.train --multirun experiment=table1 $(RECIPE_ARGS_$(RECIPE)) hydra/launcher=$(LAUNCHER) paths.runs_dir=$(RUNS) $(EXTRA)
	$(if $(and $(RECIPE_CELLS_$(RECIPE)),$(if $(EXTRA),,1)),$(PY) -m stn.train --multirun experiment=table1 \
	  $(RECIPE_CELLS_$(RECIPE)) hydra/launcher=$(LAUNCHER) paths.runs_dir=$(RUNS))
	$(MAKE) table1 figures RUNS=$(RUNS) RECIPE=$(RECIPE)

# ARCHIVE=FILE keeps the finished runs in FILE as well (JSON lines, no path of this machine) and renders from all
# of them: a table too long for one machine's life fills over several (the committed results/table1_cpu_full.md is
# rendered with ARCHIVE=results/table1_cpu_full_runs.jsonl).
ARCHIVE ?=
table1: $(STAMP)
	$(PY) -m stn.results table1 --runs $(RUNS)/table1 --recipe $(RECIPE_FOLDER_$(RECIPE)) --out $(RESULTS) \
	  --name $(or $(TABLE_NAME_$(RECIPE)),table1) $(TABLE_ARGS_$(RECIPE)) $(if $(ARCHIVE),--archive $(ARCHIVE))

# The measured comparisons behind Table 1's defaults (CPU hours; results/evidence/README.md): one config each,
# configs/evidence/<name>.yaml (its sweeps, how it is rendered, its note), rendered into results/evidence/<name>.md.
#   make evidence                 lists them
#   make evidence NAME=<name>     trains (finished or archived runs are only reported; results/evidence/<name>_runs.jsonl
#                                 keeps them across machines) and renders one
#   make evidence-table1          all of Table 1's, in this order (later ones render runs the earlier ones train)
.PHONY: evidence
EVIDENCE_TABLE1 := table1_data_stream table1_fcn_length_width table1_pe_strength table1_fast_recipe_gaps \
  table1_momentum table1_paper_budget table1_paper_schedule_rts table1_cpu_bf16 \
  table1_loc_lr table1_st_width table1_st_learned table1_st_fcn_seeds \
  table1_locnet_probe table1_rts_placement table1_p_corner_reading table1_e_readings table1_locnet_probe_frame \
  table1_e_digit_grid table1_e_digit_grid_conv table1_tc_seeds table1_tc_fixed table1_cnn_pooled \
  table1_fc_loc_input
evidence: $(STAMP)
	$(PY) -m stn.evidence $(NAME) --runs $(RUNS)

evidence-table1: $(STAMP)
	set -e; $(foreach name,$(EVIDENCE_TABLE1),$(PY) -m stn.evidence $(name) --runs $(RUNS);)

figures: $(STAMP)
	$(PY) -m stn.figures table1 --runs $(RUNS)/table1/$(RECIPE_FOLDER_$(RECIPE)) --out results/figures/table1_transformations.png

# Table 2 (SVHN; README "Table 2"): make reproduce-table2 RECIPE=paper|quick [LAUNCHER=...] [RUNS=...] [EXTRA=...]
#   paper: the paper's schedule (SGD, 400k x 128, lr 0.01 x0.1 every 80k, loc nets at 0.1 x lr), 1 seed per cell
#   quick: the same schedule on 1/10 of the budget (40k iterations); a first look, not the paper
# Both need a GPU (no CPU recipe: 235k images x 400k iterations); RECIPE defaults to cpu without one, which stops here.
T2_ARGS_paper := optim=sgd_table2 budget=svhn_paper
T2_ARGS_quick := optim=sgd_table2 budget=svhn_quick
T2_FOLDER_paper := sgd_table2-svhn_paper
T2_FOLDER_quick := sgd_table2-svhn_quick
BENCH_SVHN_ARGS ?=
.PHONY: reproduce-table2 table2 figures-table2 bench-svhn

reproduce-table2: $(STAMP)
	@test -n "$(T2_FOLDER_$(RECIPE))" || { echo "Table 2 recipes: RECIPE=paper or RECIPE=quick (both on a GPU), got RECIPE=$(RECIPE)"; exit 2; }
	@echo "Table 2 sweep: recipe $(RECIPE) ($(T2_ARGS_$(RECIPE))), launcher $(LAUNCHER), runs in $(RUNS)/table2"
	$(PY) -m stn.train --multirun experiment=table2 $(T2_ARGS_$(RECIPE)) hydra/launcher=$(LAUNCHER) paths.runs_dir=$(RUNS) $(EXTRA)
	$(MAKE) table2 figures-table2 RUNS=$(RUNS) RECIPE=$(RECIPE)

table2: $(STAMP)
	@test -n "$(T2_FOLDER_$(RECIPE))" || { echo "Table 2 recipes: RECIPE=paper or RECIPE=quick, got RECIPE=$(RECIPE)"; exit 2; }
	$(PY) -m stn.results table2 --runs $(RUNS)/table2 --recipe $(T2_FOLDER_$(RECIPE)) --out results

figures-table2: $(STAMP)
	@test -n "$(T2_FOLDER_$(RECIPE))" || { echo "Table 2 recipes: RECIPE=paper or RECIPE=quick, got RECIPE=$(RECIPE)"; exit 2; }
	$(PY) -m stn.figures table2 --runs $(RUNS)/table2/$(T2_FOLDER_$(RECIPE)) --out results/figures/table2_transformations.png

# Forward+backward per batch of ST-CNN Single / Multi vs the CNN at 64px and 128px -> results/bench/svhn_<device>.
# On the CPU: make bench-svhn BENCH_SVHN_ARGS="--batch 16 --repeats 5 --warmup 1" (OMP_NUM_THREADS=1: CPU time).
bench-svhn: $(STAMP)
	$(PY) -m stn.bench.svhn $(BENCH_SVHN_ARGS)

clean-venv:
	rm -rf $(VENV)

# ---- Table 3 (CUB-200-2011; README "Table 3"): every row x 3 seeds, each run data-parallel over every visible GPU
# (torchrun, one process per GPU; the global batch stays budget.batch_size). BUDGET=table3_short for a 1/10 pass.
# On SLURM: python -m stn.train experiment=table3 hydra/launcher=slurm_ddp hydra.launcher.partition=<partition>
.PHONY: reproduce-table3 table3 figures-table3
GPUS ?= $(shell nvidia-smi -L 2>/dev/null | wc -l)
BUDGET ?= table3
reproduce-table3: $(STAMP)
	@test "$(GPUS)" -ge 1 || { echo "Table 3 needs GPUs (none visible); set GPUS=N to override"; exit 2; }
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS) -m stn.train experiment=table3 budget=$(BUDGET) \
	  paths.runs_dir=$(RUNS) $(EXTRA)
	$(MAKE) table3 figures-table3 RUNS=$(RUNS) BUDGET=$(BUDGET)

table3: $(STAMP)
	$(PY) -m stn.results table3 --runs $(RUNS)/table3 --recipe sgd_table3-$(BUDGET) --out results

figures-table3: $(STAMP)
	$(PY) -m stn.figures table3 --runs $(RUNS)/table3/sgd_table3-$(BUDGET) --out results/figures/table3_crops.png

# ---- MNIST addition (Appendix A.1; README "MNIST addition"): FCN, CNN, ST-FCN and 2xST-FCN (Aff / Proj / TPS) on
# two independently RTS-distorted digits, label = their sum -> results/addition.{md,csv} and
# results/figures/addition_transformers.png. RECIPE=paper (default on a GPU): Table 1's schedule, 3 seeds (24 runs);
# RECIPE=fast: the fast recipe, 3 seeds; RECIPE=cpu (default otherwise): half the fast recipe's budget (7,500 x 256 =
# 1.92M samples), seed 0, the 8 models, two 1-thread trainings at a time (the CNN, about half of all the compute,
# starts first, beside the FC models): 70 min on 2 CPU cores, measured (results/addition.md).
.PHONY: reproduce-addition addition figures-addition
ADD_ARGS_paper := $(RECIPE_ARGS_paper)
ADD_ARGS_fast := $(RECIPE_ARGS_fast)
ADD_ARGS_cpu := $(RECIPE_ARGS_fast) budget.name=cpu_add budget.iterations=7500 seed=0
ADD_FOLDER_paper := sgd_table1-paper
ADD_FOLDER_fast := fast-fast
ADD_FOLDER_cpu := fast-cpu_add
ADD_LAUNCHER_cpu := parallel
ADD_LAUNCHER ?= $(or $(ADD_LAUNCHER_$(RECIPE)),$(LAUNCHER))
ADD_TABLE_ARGS_cpu := --note "This is make reproduce-addition RECIPE=cpu: half the fast budget, seed 0, the 8 \
  models, two 1-thread trainings at a time on 2 CPU cores (AMD EPYC, fp32): 70 min wall, measured with the earlier \
  shared-loc-net 2xST-FCNs (the CNN 70 min on one core, the seven FC models 32 min on the other); the three \
  2xST-FCNs, rerun with a loc net per transformer (5-11 min each, partly beside other work), keep the FC core \
  within the CNN's time. The six transformer models also ran seed 1 (make reproduce-addition RECIPE=cpu \
  EXTRA='seed=1 model=st_fcn_aff,st_fcn_proj,st_fcn_tps,2st_fcn_aff,2st_fcn_proj,2st_fcn_tps', 1 thread beside \
  other work), and the 2xST-FCN TPS seed 2 (EXTRA='seed=2 model=2st_fcn_tps'), so their cells are means of 2 \
  (3) seeds. The loc-net choices behind the 2xST-FCN's gain: results/evidence/addition_loc_net.md. What each \
  transformer's window holds, and why the 2xST-FCN TPS fails on seeds 1 and 2 (its second transformer draws both \
  digits at 0.2-0.3 of their size): results/addition_windows.md. The gaps to the paper are the budget: at a quarter \
  of the paper's samples FCN, ST-FCN Aff and 2xST-FCN Aff reach 36.99 / 20.29 / 8.25 (seed 0, 2 threads): \
  results/evidence/addition_budget.md."
ADD_WINDOWS_NOTE = Per transformer, per input channel (digit 1 / digit 2): the share of the digit's ink inside the \
  window and, in brackets, the zoom it is drawn at (1 = its own size; stn.analysis.windows). Command: make addition \
  RECIPE=$(RECIPE) (python -m stn.results windows).
reproduce-addition: $(STAMP)
	@test -n "$(ADD_ARGS_$(RECIPE))" || { echo "MNIST addition recipes: RECIPE=paper, fast or cpu, got RECIPE=$(RECIPE)"; exit 2; }
	@echo "MNIST addition sweep: recipe $(RECIPE) ($(ADD_ARGS_$(RECIPE))), launcher $(ADD_LAUNCHER), runs in $(RUNS)/addition"
	$(PY) -m stn.train --multirun experiment=addition $(ADD_ARGS_$(RECIPE)) hydra/launcher=$(ADD_LAUNCHER) paths.runs_dir=$(RUNS) $(EXTRA)
	$(MAKE) addition figures-addition RUNS=$(RUNS) RECIPE=$(RECIPE)

addition: $(STAMP)
	$(PY) -m stn.results addition --runs $(RUNS)/addition --recipe $(ADD_FOLDER_$(RECIPE)) --out $(RESULTS) \
	  $(ADD_TABLE_ARGS_$(RECIPE))
	$(PY) -m stn.results windows --runs $(RUNS)/addition/$(ADD_FOLDER_$(RECIPE)) --out $(RESULTS)/addition_windows.md \
	  --title "MNIST addition: what each transformer's window holds (recipe $(RECIPE), test set)" --note "$(ADD_WINDOWS_NOTE)"

figures-addition: $(STAMP)
	$(PY) -m stn.figures addition --runs $(RUNS)/addition/$(ADD_FOLDER_$(RECIPE)) --out results/figures/addition_transformers.png

# ---- Co-localisation (Appendix A.2; README "Co-localisation"): the encoder (the Table 1 CNN on plain MNIST, trained
# once by stn.train and cached under $(RUNS)/colocalisation_encoder), then one optimisation per digit class on T and
# TC -> results/colocalisation.{md,csv} and results/figures/colocalisation_windows.png. COLOC_ARGS: key=value
# overrides of configs/colocalisation.yaml (e.g. optim.steps=300 classes=[1,7]; seeds=[0] for one seed of the default
# three). CPU, measured on one thread: the encoder 7.1 min (once, 2000 iterations), the 20 runs of one seed 19.8 min
# alone with 64 pairs per step (400 steps, ~1 min each); with the default 256 pairs 15.9-26.4 min per seed beside one
# or two trainings (not measured alone).
.PHONY: reproduce-colocalisation
COLOC_ARGS ?=
reproduce-colocalisation: $(STAMP)
	$(PY) -m stn.colocalisation runs_dir=$(RUNS) out=$(RESULTS) $(COLOC_ARGS)

# ---- The 3D transformer (Appendix A.3; README "3D transformer"): the classifier of 60^3 volumes with and without a
# 3D affine transformer -> results/transformer3d.{md,csv} (no paper numbers). RECIPE=paper (default on a GPU):
# Table 1's schedule, 3 seeds; RECIPE=cpu (default otherwise): 1000 iterations of batch 32 with the fast optimiser,
# seeds 0-2, 2000 test volumes (the volumes are rendered per batch): per seed 6 min for the CNN and 16 min for the
# ST-CNN on one CPU core, measured; ~66 min in all.
.PHONY: reproduce-3d transformer3d figures-3d
T3D_ARGS_paper := $(RECIPE_ARGS_paper)
T3D_ARGS_cpu := optim=fast budget=fast budget.name=cpu3d budget.iterations=1000 budget.batch_size=32 \
  budget.eval_every=250 budget.eval_batch_size=100 budget.val_subset=1000 budget.test_subset=2000 seed=0,1,2
T3D_FOLDER_paper := sgd_table1-paper
T3D_FOLDER_cpu := fast-cpu3d
reproduce-3d: $(STAMP)
	@test -n "$(T3D_FOLDER_$(RECIPE))" || { echo "3D transformer recipes: RECIPE=paper or cpu, got RECIPE=$(RECIPE)"; exit 2; }
	$(PY) -m stn.train --multirun experiment=transformer3d $(T3D_ARGS_$(RECIPE)) hydra/launcher=$(LAUNCHER) paths.runs_dir=$(RUNS) $(EXTRA)
	$(MAKE) transformer3d figures-3d RUNS=$(RUNS) RECIPE=$(RECIPE)

T3D_TABLE_ARGS_cpu := --note "This is make reproduce-3d RECIPE=cpu: 1,000 iterations of 32 freshly placed volumes, \
  seeds 0, 1 and 2, tested on the first 2,000 test digits (each at its fixed placement), CPU, 1 thread. The paper gives no \
  numbers (a figure only): the rows compare the same classifier with and without the 3D transformer at equal \
  parameters."
transformer3d: $(STAMP)
	$(PY) -m stn.results transformer3d --runs $(RUNS)/transformer3d --recipe $(T3D_FOLDER_$(RECIPE)) --out $(RESULTS) \
	  $(T3D_TABLE_ARGS_$(RECIPE))

figures-3d: $(STAMP)
	$(PY) -m stn.figures transformer3d --runs $(RUNS)/transformer3d/$(T3D_FOLDER_$(RECIPE)) --out results/figures/transformer3d_projections.png
