"""Tools beside the pipeline: benchmarks, the paper's experiments and their report, the generated
parts of the docs, the tiny repository the end-to-end tests and a benchmark run. They import the
library (``pipeline``); the library never imports them."""
