"""Real fixture paths and in-memory representation stores encoded from them.

Model tests need a `StoreData` without running ingest and represent; this builds one
from a few small real files with the representation's own encoder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.params import default_params

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "midi"  # provenance: SOURCES.txt there
SMALL = (
    FIXTURES
    / "maestro"
    / ("giantmidi_eval_MIDI-Unprocessed_11_R1_2011_MID--AUDIO_R1-D4_07_Track07_wav.mid")
)
SMALL_2 = FIXTURES / "other" / "symusic_1.midi"
SMALL_3 = FIXTURES / "other" / "miditoolkit_1390.mid"


def encoded_store(
    representation: str,
    splits: dict[str, list[Path] | list[tuple[Path, str]]],
    **param_changes: Any,
) -> Any:
    """A `StoreData` of `representation` rows, piece ids `<split>:<file name>`.

    `splits` maps a split to files, or to (file, style) pairs: then `pieces` lists
    each piece's id, split and style (what style-conditioned models read); otherwise
    it is empty. `param_changes` replace fields of the representation's default params.
    """
    from pipeline import representations
    from pipeline.midi import parse_midi
    from pipeline.representations import StoreData

    rep = representations.get(representation)
    params = dataclasses.replace(default_params(rep.name, rep.params_cls), **param_changes)
    rows, pieces = {}, []
    for split, entries in splits.items():
        parts = []
        for entry in entries:
            path, style = entry if isinstance(entry, tuple) else (entry, None)
            parsed = parse_midi(path)
            pid = f"{split}:{path.name}"
            notes, pedals = parsed.notes.assign(piece_id=pid), parsed.pedals.assign(piece_id=pid)
            parts.append(rep.encode(notes, pedals, params))
            if style is not None:
                pieces.append({"piece_id": pid, "split": split, "style": style})
        rows[split] = pd.concat(parts, ignore_index=True)
    return StoreData(rows=rows, pieces=pd.DataFrame(pieces), params=params)


def repr_params(name: str, **changes: Any) -> Any:
    """Representation `name`'s params as params.yaml ships them, with `changes`."""
    from pipeline import representations
    from pipeline.core.params import default_params

    return dataclasses.replace(
        default_params(name, representations.get(name).params_cls), **changes
    )


def shipped(section: str) -> dict[str, Any]:
    """The raw params.yaml `section` (dotted) as Etude ships it, to overlay test values on."""
    from pipeline.core.config import DEFAULT_PARAMS_FILE
    from pipeline.core.params import get_section, read_params_file

    return dict(get_section(read_params_file(DEFAULT_PARAMS_FILE), section))


def model_config(name: str, **changes: Any) -> Any:
    """Model `name`'s config as params.yaml ships it (`models.<name>`), with `changes`."""
    from pipeline.core.config import DEFAULT_PARAMS_FILE
    from pipeline.modeling.train import load_train_params

    config, _ = load_train_params(name, DEFAULT_PARAMS_FILE)
    return dataclasses.replace(config, **changes)
