"""Encode speed of the four representations against the tools people would reach for.

On the real fixture MIDI files (repeated to a few hundred thousand notes), times the
median of N runs of each `encode` (all pieces in one call, as the represent stage
does per chunk) against its peer in the same process:

* pianoroll and prv vs `pretty_midi.PrettyMIDI.get_piano_roll(fs=20)` (dense 50 ms
  roll with the sustain pedal applied, the same job as pianoroll's default);
* events vs miditok 3.x `MIDILike` (NoteOn / NoteOff / TimeShift / Velocity, the
  closest miditok tokeniser to the Performance encoding) on symusic Scores, all
  tracks in one stream;
* tuples has no packaged peer; it is reported alone.

Parsing is excluded on both sides (notes tables, PrettyMIDI objects and Scores are
built once, before timing). Writes reports/bench/represent.json and prints a table.

    .venv/bin/python benchmarks/bench_represent.py [--repeat 1] [--runs 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline import representations
from pipeline.core.config import ROOT
from pipeline.core.io import write_json
from pipeline.midi import parse_midi

FIXTURES = ROOT / "tests" / "fixtures" / "midi"


def midi_files() -> list[Path]:
    files = sorted(p for p in FIXTURES.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise SystemExit(f"no MIDI fixtures under {FIXTURES}")
    return files


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="times each file is repeated")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool (median)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "represent.json")
    args = parser.parse_args()

    import miditok
    import pretty_midi
    import symusic

    files = midi_files()
    notes_parts, pedal_parts = [], []
    for path in files:
        parsed = parse_midi(path)
        for copy in range(args.repeat):
            piece = f"{path.name}#{copy}"
            notes_parts.append(parsed.notes.assign(piece_id=piece))
            pedal_parts.append(parsed.pedals.assign(piece_id=piece))
    notes = pd.concat(notes_parts, ignore_index=True)
    pedals = pd.concat(pedal_parts, ignore_index=True)
    n_notes = len(notes)
    n_pieces = len(files) * args.repeat

    midis = [pretty_midi.PrettyMIDI(str(p)) for p in files] * args.repeat
    scores = [symusic.Score(str(p)) for p in files] * args.repeat
    tokenizer = miditok.MIDILike(
        miditok.TokenizerConfig(num_velocities=32, use_programs=True, use_time_signatures=False)
    )

    def pretty_midi_rolls() -> None:
        for midi in midis:
            midi.get_piano_roll(fs=20)

    def miditok_tokens() -> None:
        for score in scores:
            tokenizer.encode(score)

    peers = {
        "pretty_midi.get_piano_roll(fs=20)": pretty_midi_rolls,
        "miditok.MIDILike": miditok_tokens,
    }
    peer_of = {
        "pianoroll": "pretty_midi.get_piano_roll(fs=20)",
        "prv": "pretty_midi.get_piano_roll(fs=20)",
        "events": "miditok.MIDILike",
        "tuples": None,
    }
    peer_times = {name: median_time(fn, args.runs) for name, fn in peers.items()}

    results = {}
    for name in representations.names():
        rep = representations.get(name)
        params = rep.params_cls()
        seconds = median_time(lambda rep=rep, params=params: rep.encode(notes, pedals, params),
                              args.runs)  # fmt: skip
        peer = peer_of.get(name)
        entry: dict[str, object] = {
            "median_s": round(seconds, 4),
            "notes_per_s": round(n_notes / seconds),
            "peer": peer,
        }
        if peer:
            entry["peer_median_s"] = round(peer_times[peer], 4)
            entry["peer_notes_per_s"] = round(n_notes / peer_times[peer])
            entry["speedup_vs_peer"] = round(peer_times[peer] / seconds, 2)
        results[name] = entry

    report = {
        "notes": n_notes,
        "pieces": n_pieces,
        "files": len(files),
        "repeat": args.repeat,
        "runs": args.runs,
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "results": results,
    }
    write_json(args.out, report)

    print(f"{n_notes} notes in {n_pieces} pieces, median of {args.runs} runs")
    print(f"{'repr':<10} {'ours s':>8} {'Mnotes/s':>9} {'peer s':>8} {'speedup':>8}  peer")
    for name, r in results.items():
        peer_s = f"{r['peer_median_s']:.3f}" if r["peer"] else "-"
        speedup = f"{r['speedup_vs_peer']:.1f}x" if r["peer"] else "-"
        print(f"{name:<10} {r['median_s']:>8.3f} {r['notes_per_s'] / 1e6:>9.2f} {peer_s:>8} "
              f"{speedup:>8}  {r['peer'] or '(none)'}")  # fmt: skip
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
