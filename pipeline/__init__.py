"""Etude: a DVC-tracked toolkit for symbolic music generation research.

Heavy libraries (torch, great_expectations, symusic) are imported inside the
modules that need them, so `import pipeline` and `etude --help` stay fast.

Layers, top to bottom (the one place they are written; tests/test_layers.py reads
this list and checks every import of every module against it):

    cli, __main__
    report
    evaluation
    modeling
    representations, validation, sources, ingest, ingest_pool
    core, registry, splits, midi, download, expect

A module imports only from its own layer or the layers below, and imports at
function level count as much as those at the top. Within a layer an import may point
sideways (`validation` runs the checks that `representations` declare) but never
back: no two modules, and no two of the names above, import each other, directly or
round a loop. What two layers share moves down: `expect` (the vocabulary of store
checks) sits below both `representations` and `validation`; the frame metric
(`modeling.frames`) below the `frames` stage (`evaluation.frames`). `download` is
the HTTP and archive code the `sources` use, so it sits with `core` (paths, params,
atomic writes, store files: `core.params` is the only reader of params.yaml). Names
that a registry or the CLI's table resolves at run time (`representations.REGISTRY`,
`cli.COMMANDS`) are loaded, not imported, and point down the same way.
"""

__version__ = "0.1.0"
