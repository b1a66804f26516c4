"""The GPU check: TRD measured where users run it, in two calls of a lent GPU machine (issues 13, 20).

    experiments/gpu_check.sh --prepare --images DIR [--train-script PATH] [--imagenette TAR]   # here: .gpu_check/
    experiments/gpu_check.sh --call 1          # on the GPU: accuracy (~6.5 min)
    experiments/gpu_check.sh --call 2          # on the GPU: multi-process, torch.compile, speed (~5 min)
    experiments/gpu_check.sh --call bench      # bench_trd.py's phases, cut from the two calls (~5 min)
    experiments/gpu_check.sh --dry-run --call 1|2|bench|all   # the same phases on the CPU, tiny (tests/test_gpu_check.py)

Call 1, accuracy. ResNet-50 from scratch on the carried Imagenette subset (160 px) through timm's train.py
with the plugin, three arms with the same recipe and epochs: ``acc-baseline`` (160 px), ``acc-trd``
(``--trd-prob 0.5 --trd-size 80 --trd-bn-recal 8``) and ``acc-sizes`` (timm's own ``--train-img-sizes 160 80
--train-size-probs 0.5 0.5``); AMP, channels_last, every CPU core a loader worker. Reported: top-1 per epoch,
wall time per epoch, the time ratio to the baseline, and the CUDA allocator's peaks and retries per arm,
against the bound :data:`plan.MEMORY_BOUND`.

Call 2, the paths that need more than one process or a GPU. ``ddp`` and ``ddp-syncbn``: two processes on the
one GPU (``torchrun --nproc_per_node 2``; NCCL refuses two ranks on one device, so the group is gloo, whose
collectives take CUDA tensors through host memory, see experiments/gpu_check/train_child.py) with TRD,
``--trd-bn-recal`` (averaged with timm's ``distribute_bn``), ``--model-ema``, train.py's ``--dist-bn reduce``,
and ``--sync-bn`` in the second; checked: the collectives on CUDA tensors, the ranks serving the same sizes,
the recalibration averaged over both, every rank ending each epoch with bit-identical weights and buffers (model
and EMA). ``compile-default`` and ``compile-reduce-overhead``: train.py's ``--torchcompile`` (ResNet-18, to fit
the time) with TRD: graphs built per epoch in training and validation, recompiles and their guards, compile
time. ``trainpy-baseline`` / ``-loader`` / ``-device``: ResNet-50 224 px vs 112 px on the carried photos,
wall time per epoch against the full-size run, and the allocator's peaks at 224 px.

Each phase runs as a subprocess with its own time budget (GPU seconds, :data:`plan.PROFILES`); it may use what
earlier phases left, never the later phases' budgets; one that fails or runs out of time is recorded and the
next one runs. The results folder (``--out``, default ``$OUT``, else outputs/gpu_check) gets ``gpu_check.json``
(everything), ``gpu_check.txt`` (the tables, also printed last) and ``gpu_check_logs.tar.gz`` (the logs, the
probes' JSON lines, summary.csv and args.yaml of every train.py run, the benchmarks' JSON) after every phase.

Time plan (the device lends 900 s to a task, all calls, the machine's start and idle time counted):
start <= 120 s, call 1 <= 390 s (setup 25 + 3 arms x 120), call 2 <= 295 s (setup 25, ddp 45, ddp-syncbn 40,
compile 50 + 40, speed 3 x 30), so 805 s plus the transfers, if call 2 is made within the 30 s the machine stays
warm. One arm's 120 s: ~25 s start (imports, CUDA, 16 workers, cuDNN autotuning), then 30 epochs of 27 steps of
256 images at 160 px. ResNet-50 trains at ~2470 img/s on an A100 at 224 px with AMP; an H200 is no slower, and
160 px costs (160/224)^2 = 0.51 of the FLOPs, so >= ~4000 img/s: 1.7 s of GPU per epoch, plus ~0.8 s for
validation (1500 images), the checkpoint (on /dev/shm) and the loader's restart, 2.5 s per epoch, 75 s for 30.
The loader keeps up: the carried 160 px JPEGs cost 1.03 ms of one core each with train.py's augmentation
(0.68 ms at 80 px; CPU time, measured here), so 15 workers give ~14,500 img/s. The speed phases of issue 13
(bench-compute, bench-loader, bench-compile: 280 s) and its 4-epoch train.py runs were cut to fit: ``--call
bench`` still runs the first three, and the train.py speed runs are 2 epochs of 16 steps.

The modules, one per phase, and what they share (imports run downward; ``train_child.py`` runs as a script):

- ``__main__.py``: the command line (``experiments/gpu_check.sh`` runs this folder);
- ``runner.py``: ``Check``, which runs the phases within their budgets, each train.py run through
  ``train_child.py``, and writes the results after every phase;
- ``report.py``: the tables;
- ``setup_phase.py``, ``accuracy.py``, ``ddp.py``, ``compiling.py``, ``speed.py``: the phases, each run and read;
- ``common.py``: subprocesses with a time limit, and what a train.py run leaves (probe records, summary.csv);
- ``plan.py``: the profiles, the phases of each call and their time budgets, the device calls;
- ``prepare.py``: ``--prepare``; ``train_child.py``: timm's train.py with TRD, watched.
"""
