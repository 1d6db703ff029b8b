"""What measures and documents the project itself: the benchmarks (``bench``), the generated
parts of the docs (``docs``), the tiny repository the end-to-end tests and a benchmark run
(``tinyrepo``)."""
