"""One module per pipeline stage; each exposes `run(...)`, does the stage's I/O and calls the core library.

The CLI, DVC and the Prefect tasks all enter through these functions.
"""
