"""Tools beside the pipeline, by who uses them: ``experiments`` (running the paper's experiments,
the report, paired comparisons), ``probes`` (the candidate grids' locality), ``project`` (the
benchmarks, the docs generator, the tests' tiny repository). They import the library
(``pipeline``); the library never imports them."""
