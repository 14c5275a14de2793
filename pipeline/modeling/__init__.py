"""Model code (trained artifacts live in the top-level `models/` folder).

Each model is one module that calls `pipeline.modeling.base.register(ModelSpec(...))`;
`get(name)` imports the modules on first use, so `import pipeline.modeling` stays light.
"""

from __future__ import annotations

from pipeline.modeling.base import ModelSpec, get, names

__all__ = ["ModelSpec", "get", "names"]
