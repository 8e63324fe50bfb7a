"""Is the project ready for a GPU? One command that checks and measures it on one device, in minutes.

    python -m stn.gpu_check [--device auto|cpu|cuda] [--quick] [--max-seconds S] [--sections NAME ...]
                            [--columns mnist_r ...] [--models fcn ...] [--concurrency 1 2 4 8]
                            [--out results/bench] [--work DIR]

Sections, in this order, each bounded by its share of the time left; a failure is recorded and the rest goes on:
  data         generate the distorted-MNIST columns once (MNIST from MNIST_SOURCE: no network needed)
  tests        the CUDA-only tests (pytest -k cuda)
  runs         `python -m stn.train` briefly for every model with compile off and on (data.redraw_train=true); a run
               killed (-9) after its first checkpoint and rerun, against an uninterrupted twin; an fp32 / bf16 pair
               of short fast-recipe runs (test errors side by side)
  throughput   steady-state training images/s of every model on every column: fp32 (TF32), bf16, bf16 + compile
  concurrency  aggregate images/s of k training processes sharing the device
  projection   GPU-hours of Table 1 at the paper's budget from the measurements (the report says how)

Heavy work runs in subprocesses (this package with --worker), so a hang or a crash costs one section, not the
check. <out>/gpu_check_<gpu>.md and .json are rewritten (atomically) after every section. `--device cpu` runs the
same sections with tiny step counts: a rehearsal of the plumbing, its numbers mean nothing.

Modules: plan (sections, step counts, the grid), processes (subprocesses under deadlines), sections, workers (the
subprocess side), projection, report, cli (the command line, `python -m stn.gpu_check`).
"""
