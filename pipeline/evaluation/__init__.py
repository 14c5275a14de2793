"""Evaluation: musical metrics (`metrics`), audio and piano-roll rendering (`render`),
the evaluate stage (`evaluate`) and the HTML report (`report`).

Kept empty of imports so that `import pipeline.evaluation` stays light; import the
submodule you need.
"""
