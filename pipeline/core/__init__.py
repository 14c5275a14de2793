"""What every `etude` command loads: paths, params, atomic writes, store files and the
command helpers.

Every stage in dvc.yaml depends on this folder as a whole, so it holds only code that
every command really runs (tests/test_dag.py checks it), and it imports nothing heavy
at package load. Code that only some commands run lives beside them (`pipeline.splits`,
`pipeline.registry`, `pipeline.expect`).
"""
