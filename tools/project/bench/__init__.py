"""Speed and memory figures of the pipeline's hot paths: ``make bench`` prints a table and writes
``metrics/bench.json``.

Figures, not asserts: every row is the ratio of two figures measured in the same run (two timings
taken back to back, or two peak memory sizes), so a noisy or slow machine still gives comparable
rows. The rows, one module each, in the order they run:

1. ``cache_throughput`` (``cache.py``): frames/s of the cache stage (``features.write_cache`` on
   JPEG files: decode, resize, backbone, HDF5 write) over frames/s of the bare backbone on
   preloaded tensors of the same batch size. Target >= 0.85. Timings are the best of several runs
   (a disturbed run is only ever slower).
   Row 1 is measured again, on fewer frames, with the paper's ResNet-50 at 256x128
   (``<row>_paper``, ``paper_backbone.py``; about 5x the FLOPs per frame), and so is row 3, on
   batches of 4 x 2 clips.
2. ``eval_<protocol>_speedup``, ``eval_<protocol>_vs_sort``, ``eval_<protocol>_memory``
   (``evaluation.py``): ``metrics.evaluate_rank`` on a MARS-sized problem (1980 queries x 12180
   gallery items) against ``usual_evaluator`` (a full argsort, a match matrix, then a Python loop
   over the queries that computes AP item by item, the shape of the classic torchreid evaluator)
   and ``sort_bound`` (one argsort per query row and nothing else, the lower bound of any ranking
   evaluator). Targets: >= 20x faster than the first, <= 1.5x the second, <= 1 GB of extra peak
   memory (measured with ``tracemalloc``, which traces numpy's allocations, in a run of its own).
3. ``attention_cached_epoch`` (``attention.py``): one epoch of the attention stage on frames, the
   backbone in the loop (frozen: eval mode, no gradients, the cheapest uncached training can be),
   over one epoch on the cached grids (``data.CachedClipDataset``); both through ``train.fit``
   with the DRSA heads and the OIM loss. Reported, no target. ``cached_step_overhead`` (same
   module): that cached epoch over the same steps on batches already in memory (the heads'
   forward, loss, backward and SGD step alone): what loading the cache and the loop cost on top.
   Target <= 1.2.
4. ``cache_memory_flatness`` (``memory.py``): peak RSS of a fresh process running
   ``write_cache`` on 4x the frames over the same on 1x (VmHWM, reset once the imports are done;
   ``ru_maxrss``, which cannot be reset, is reported beside it). Target: about 1 (<= 1.1); memory
   must not grow with the dataset.
5. ``experiment_overhead`` (``experiment.py``): wall time of ``dvc exp run -S model.K=8`` after a
   full ``dvc repro`` of a tiny configuration (``tools.project.tinyrepo``) in a throw-away git
   repository, over that repro. Reported, no target; skipped with ``--quick``.

``common.py`` holds what the rows share (the sizes, the setup, the row format, the frame files);
``__main__.py`` runs them all. Defaults are the default run's (MobileNetV2, last stride 1,
128x64 frames, cache batch 64, 2 loader workers) and fit a 2-core CPU in a few minutes; ``--quick``
shrinks every size to a smoke test of the code paths (its figures mean little; the time goes to
imports and process starts). Every row in the paper's setting: ``--backbone resnet50
--last-stride 2 --height 256 --width 128`` (expect that run to take several times longer on a
CPU). ``--grid-block features.16`` (``model.grid_block``) caches and trains on an earlier block's
grids, the backbone run up to that block only (the paper rows stay on the whole ResNet-50).

    python -m tools.project.bench --out metrics/bench.json [--quick]
"""
