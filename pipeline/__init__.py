"""DRSA video person re-identification: the library (model, losses, sampling, metrics, params)
and one module per DVC stage."""
