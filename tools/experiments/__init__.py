"""What serves a user running the paper's experiments and reading them: the experiments
(``cells``: ``python -m tools.experiments``), the report of Tables 1 and 2 (``report``, with
``sources``, ``data``, ``tables``, ``chart``), paired comparisons (``paired``), the attention sweep
(``sweep``) and the noise of the headline (``noise``)."""
