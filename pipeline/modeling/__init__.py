"""Model code (trained artifacts live in the top-level `models/` folder).

Models are grouped by the store they read: ``pipeline/modeling/<representation>/``
holds what its models share (``__init__.py``), one module per model, which calls
`pipeline.modeling.base.register(ModelSpec(...))`, and the models' samplers
(``sampling.py``). `get(name)` imports only that model's module (and its family
package), so `import pipeline.modeling` stays light and a stage loads only the model
it runs.
"""

from __future__ import annotations

from pipeline.modeling.base import ModelSpec, get, names

__all__ = ["ModelSpec", "get", "names"]
