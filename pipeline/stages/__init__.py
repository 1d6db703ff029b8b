"""One module per DVC stage. Each reads its own params keys, takes its paths from the command line
exactly as dvc.yaml passes them, calls the library, and writes its outputs atomically."""
