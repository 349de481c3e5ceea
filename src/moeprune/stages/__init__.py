"""One module per pipeline stage; each exposes `run(...)`, does the stage's I/O and calls the core library.

The CLI, DVC and the Prefect tasks all enter through these functions. Their arguments mean the same in
every stage (a stage's docstring names only the others):

- `model`: the Hugging Face model directory the stage reads.
- `out`: what it writes, atomically, after `moeprune.outputs.claim_output` accepted the place.
- `params`: its validated params model (`moeprune.params`), built from params.yaml or, by the CLI, from the
  flags (`moeprune.params.from_flags`); the stage does not check those values again. Stages whose
  only inputs are paths and a switch or two (`inspect`, `prune-experts`) have none.
- `device`: auto, cpu, cuda, cuda:N or mps (`moeprune.devices.resolve_device`).
- `overwrite`: replace an existing `out` that is not an earlier output of this stage.
"""
