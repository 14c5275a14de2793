"""The biaxial LSTM (DeepJ) and the shared prv windows, styles and baseline."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fixture_stores import FIXTURES, encoded_store, model_config
from torch.utils.data import DataLoader

from pipeline.core.params import ParamsError, from_mapping
from pipeline.modeling import base, prv
from pipeline.modeling.base import StoreData
from pipeline.modeling.checkpoint import describe, load_model, save_checkpoint
from pipeline.modeling.prv import make_dataset, prepare
from pipeline.modeling.prv.biaxial import BiaxialConfig, BiaxialLSTM, prv_losses
from pipeline.modeling.prv.sampling import generate_biaxial, lstm_step, stepwise_logits
from pipeline.modeling.sampling import SampleOptions

MAESTRO = FIXTURES / "maestro" / "giantmidi_eval_MIDI-Unprocessed_"
# (file, style) per split: small real files; "Liszt" appears only in test (-> <unk>)
SPLITS = {
    "train": [
        (Path(f"{MAESTRO}11_R1_2011_MID--AUDIO_R1-D4_07_Track07_wav.mid"), "Chopin"),
        (Path(f"{MAESTRO}09_R3_2008_01-07_ORIG_MID--AUDIO_09_R3_2008_wav--2.mid"), "Bach"),
        (FIXTURES / "other" / "miditok_POP909_008.mid", "pop909"),
    ],
    "validation": [(FIXTURES / "other" / "symusic_1.midi", "Bach")],
    "test": [
        (FIXTURES / "other" / "miditoolkit_1390.mid", "Liszt"),
        (Path(f"{MAESTRO}24_R1_2011_MID--AUDIO_R1-D9_11_Track11_wav.mid"), "Chopin"),
    ],
}


def prv_store(max_steps: int = 200) -> StoreData:
    """Test helper: an in-memory prv store encoded from real fixture files."""
    return encoded_store("prv", SPLITS, max_steps_per_piece=max_steps)


@pytest.fixture(scope="module")
def store() -> StoreData:
    return prv_store()


def tiny_config(**kw: object) -> BiaxialConfig:
    base_kw = dict(
        time_hidden=16,
        note_hidden=16,
        style_dim=4,
        neighbour_window=3,
        seq_len=8,
        style_dropout=0.0,
        styles=("<unk>", "Bach", "Chopin"),
        min_pitch=36,
        n_pitches=12,
        steps_per_second=8.0,
    )
    return model_config("biaxial", **{**base_kw, **kw})


def cells(piece_id: str, items: list[tuple[int, int, bool, float]]) -> pd.DataFrame:
    step, pitch, replay, volume = zip(*items, strict=True)
    return pd.DataFrame(
        {
            "piece_id": [piece_id] * len(step),
            "step": np.array(step, np.int32),
            "pitch": np.array(pitch, np.int16),
            "replay": np.array(replay, bool),
            "volume": np.array(volume, np.float32),
        }
    )


@dataclasses.dataclass(frozen=True)
class ToyParams:
    steps_per_second: int = 8
    min_pitch: int = 60
    n_pitches: int = 2


# --------------------------------------------------------------------------------------
# registry, config, prepare


def test_registered_with_prepare() -> None:
    spec = base.get("biaxial")
    assert spec.representation == "prv"
    assert spec.model_cls is BiaxialLSTM
    assert spec.prepare is prepare


def test_prepare_fills_styles_and_grid(store: StoreData) -> None:
    config = prepare(store, model_config("biaxial"))
    # train styles sorted after <unk>; "Liszt" is test-only so it is not in the vocabulary
    assert config.styles == ("<unk>", "Bach", "Chopin", "pop909")
    assert (config.min_pitch, config.n_pitches, config.steps_per_second) == (36, 48, 8.0)
    # a fixed vocabulary from params.yaml is kept
    fixed = prepare(store, model_config("biaxial", styles=("<unk>", "Chopin")))
    assert fixed.styles == ("<unk>", "Chopin")


def test_config_round_trips_through_params_and_rejects_bad_styles() -> None:
    raw = describe(tiny_config())
    assert raw["styles"] == ["<unk>", "Bach", "Chopin"]
    assert from_mapping(raw, BiaxialConfig, "models.biaxial") == tiny_config()
    with pytest.raises(ParamsError, match="styles must start with '<unk>'"):
        from_mapping({**raw, "styles": ["Bach"]}, BiaxialConfig, "models.biaxial")
    with pytest.raises(ParamsError, match="unknown key 'models.biaxial.bogus'"):
        from_mapping({"bogus": 1}, BiaxialConfig, "models.biaxial")


def test_model_needs_prepared_config() -> None:
    with pytest.raises(ValueError, match="prepare"):
        BiaxialLSTM(model_config("biaxial"))


# --------------------------------------------------------------------------------------
# the prv family package: dense tensors, windows, styles, baseline


def test_dense_round_trip_on_real_rows(store: StoreData) -> None:
    rows = store.rows["train"]
    one = rows[rows["piece_id"] == rows["piece_id"].iloc[0]].reset_index(drop=True)
    dense = prv.rows_to_dense(one, 48)
    assert dense.shape == (int(one["step"].max()) + 1, 48, 3)
    back = prv.dense_to_rows(dense, one["piece_id"].iloc[0])
    expected = one.sort_values(["step", "pitch"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected.astype({"piece_id": object}))


def test_validation_windows_tile_each_piece_once(store: StoreData) -> None:
    config = prepare(store, tiny_config(seq_len=16, styles=()))
    data = make_dataset(store, config, "test")
    pieces = prv.split_pieces(store, "test", 48)
    rebuilt: dict[int, list[np.ndarray]] = {}
    previous_last: np.ndarray | None = None
    for i in range(len(data)):
        item = data[i]
        x, mask = item["x"].numpy(), item["mask"].numpy()
        assert x.shape == (17, 48, 3) and mask.shape == (16,)
        piece = data.index.locate(i)[0]
        first_of_piece = i == 0 or piece != data.index.locate(i - 1)[0]
        if first_of_piece:
            assert not x[0].any()  # nothing before a piece's first step
        else:
            np.testing.assert_array_equal(x[0], previous_last)  # context = previous step
        previous_last = x[-1]
        rebuilt.setdefault(piece, []).append(x[1:][mask > 0])
    for k, parts in rebuilt.items():
        whole = np.concatenate(parts)
        n = int(pieces.n_steps[k])
        np.testing.assert_array_equal(whole, prv.dense_steps(pieces, k, 0, n, 48))


def test_styles_in_items(store: StoreData) -> None:
    config = prepare(store, tiny_config(styles=()))
    data = make_dataset(store, config, "test")
    by_piece = {}
    for i in range(len(data)):
        piece = data.pieces.piece_ids[data.index.locate(i)[0]]
        by_piece[piece] = int(data[i]["style"])
    chopin = config.styles.index("Chopin")
    assert sorted(by_piece.values()) == [0, chopin]  # Liszt unseen in train -> <unk>


def test_train_windows_are_seeded_by_epoch(store: StoreData) -> None:
    config = prepare(store, tiny_config(styles=()))
    torch.manual_seed(3)
    a = make_dataset(store, config, "train")
    torch.manual_seed(3)
    b = make_dataset(store, config, "train")
    np.testing.assert_array_equal(a[1]["x"].numpy(), b[1]["x"].numpy())
    starts = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        starts.add(a[1]["x"].numpy().tobytes())
    assert len(starts) > 1  # offsets move between epochs


def test_baseline_literal_values() -> None:
    train = cells(
        "a", [(0, 0, True, 0.5), (1, 0, False, 0.5), (2, 1, True, 1.0), (3, 0, True, 0.5)]
    )
    test = cells("b", [(0, 0, True, 0.25), (1, 1, True, 0.75)])
    store = StoreData(
        rows={"train": train, "validation": test, "test": test},
        pieces=pd.DataFrame({"piece_id": ["a", "b"], "style": ["x", "y"]}),
        params=ToyParams(),
    )
    got = base.get("biaxial").baseline(store, model_config("biaxial"))
    # train play rates: pitch 0 3/4, pitch 1 1/4; test: each pitch played 1 of 2 steps
    assert got["baseline_nll"] == pytest.approx(-(math.log(0.75) + math.log(0.25)) / 2)
    assert got["baseline_replay"] == pytest.approx(-math.log(0.75))  # replay rate 3/4
    # mean train volume 0.625; test volumes 0.25 and 0.75
    assert got["baseline_dynamics"] == pytest.approx((0.375**2 + 0.125**2) / 2)


def test_baseline_finite_on_real_store(store: StoreData) -> None:
    got = base.get("biaxial").baseline(store, model_config("biaxial"))
    assert set(got) == {"baseline_nll", "baseline_replay", "baseline_dynamics"}
    assert all(math.isfinite(v) and v > 0 for v in got.values())
    assert got["baseline_nll"] < math.log(2)


# --------------------------------------------------------------------------------------
# losses


def test_losses_literal_and_masked() -> None:
    target = torch.zeros(1, 2, 2, 3)
    target[0, 0, 0] = torch.tensor([1.0, 1.0, 0.7])  # one played cell at step 0
    logits = torch.zeros(1, 2, 2, 3)
    mask = torch.tensor([[1.0, 0.0]])  # step 1 is padding
    terms = prv_losses(logits, target, mask)
    assert float(terms["play"]) == pytest.approx(math.log(2))
    assert float(terms["replay"]) == pytest.approx(math.log(2))
    assert float(terms["dynamics"]) == pytest.approx((0.5 - 0.7) ** 2)
    assert float(terms["cells"]) == 2 and float(terms["played"]) == 1

    changed = logits.clone()
    changed[0, 0, 1, 1:] = torch.tensor([5.0, -3.0])  # replay/volume of a silent cell
    changed[0, 1] = 7.0  # everything at the padded step
    again = prv_losses(changed, target, mask)
    for key in ("play", "replay", "dynamics"):
        assert float(again[key]) == pytest.approx(float(terms[key]))
    changed[0, 0, 0, 1:] = torch.tensor([5.0, -3.0])  # the played cell does count
    moved = prv_losses(changed, target, mask)
    assert float(moved["replay"]) < float(terms["replay"])
    assert float(moved["dynamics"]) != pytest.approx(float(terms["dynamics"]))


def test_lstm_step_matches_nn_lstm() -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 7, num_layers=2, batch_first=True).eval()
    x = torch.randn(3, 4, 5)
    expected, _ = lstm(x)
    state = None
    for t in range(4):
        out, state = lstm_step(lstm, x[:, t], state)
        torch.testing.assert_close(out, expected[:, t])


@pytest.mark.parametrize("vicinity", [0, 24])
def test_sampling_path_computes_training_logits(vicinity: int) -> None:
    torch.manual_seed(0)
    model = BiaxialLSTM(tiny_config(n_layers=2, vicinity_filters=vicinity, beat_period=3)).eval()
    x = (torch.rand(2, 6, 12, 3) < 0.3).float()
    style = torch.tensor([1, 2])
    torch.testing.assert_close(
        stepwise_logits(model, x, style), model.logits(x, style), atol=1e-5, rtol=1e-4
    )


# --------------------------------------------------------------------------------------
# training and sampling


@pytest.mark.parametrize("cells", ["all", "played"])
def test_forward_terms(store: StoreData, cells: str) -> None:
    config = prepare(store, tiny_config(styles=(), n_pitches=0, aux_loss_cells=cells))
    model = BiaxialLSTM(config)
    batch = next(iter(DataLoader(make_dataset(store, config, "validation"), batch_size=2)))
    out = model(batch)
    assert {"loss", "nll", "play", "replay", "dynamics", "n_units", "play_rate_bias"} <= set(out)
    aux = float(out["replay"]) + float(out["dynamics"])  # both per played cell
    if cells == "all":  # DeepJ: averaged over every pitch-step, unplayed cells zero
        played = float((batch["x"][:, 1:, :, 0] * batch["mask"][..., None]).sum())
        aux *= played / float(out["n_units"])
    assert float(out["loss"].detach()) == pytest.approx(float(out["play"]) + aux, rel=1e-5)
    assert float(out["nll"]) == float(out["play"])
    assert float(out["n_units"]) == float(batch["mask"].sum()) * 48


def test_inputs_context_beat_and_note_axis_volume() -> None:
    torch.manual_seed(0)
    model = BiaxialLSTM(tiny_config(neighbour_window=0, vicinity_filters=0, beat_period=4))
    prev = torch.zeros(1, 2, 12, 3)
    prev[0, 0, [0, 4, 7], 0] = 1.0  # C E G at the first step
    feats = model.time_inputs(prev, torch.zeros(1, 0), torch.tensor([[5, 6]]))
    # own play/replay (2), volume (1), position + pitch class (13), context (1), beat (4)
    assert feats.shape == (1, 2, 12, 2 + 1 + 13 + 1 + 4)
    assert feats[0, 0, :, 16].tolist() == [1.0 if k in (0, 4, 7) else 0.0 for k in range(12)]
    assert feats[0, 1, :, 16].abs().sum() == 0
    assert feats[0, 0, 0, 17:].tolist() == [0, 1, 0, 0] and feats[0, 1, 0, 17:].tolist() == [
        0, 0, 1, 0,
    ]  # fmt: skip
    model.eval()
    x = (torch.rand(1, 3, 12, 3) < 0.4).float()
    louder = x.clone()
    louder[0, 1, 3, 2] = 0.9  # volume of pitch 3 at predicted step 0
    a, b = model.logits(x, torch.tensor([1])), model.logits(louder, torch.tensor([1]))
    torch.testing.assert_close(a[0, 0, :4], b[0, 0, :4])  # the pitch itself and below
    assert not torch.allclose(a[0, 0, 4], b[0, 0, 4])  # the next pitch sees its volume
    moved = model.logits(x, torch.tensor([1]), torch.tensor([1]))  # another beat
    assert not torch.allclose(a, moved)


def test_overfits_one_batch(store: StoreData) -> None:
    torch.manual_seed(0)
    config = prepare(store, tiny_config(styles=(), n_pitches=0, time_hidden=32, note_hidden=32))
    model = BiaxialLSTM(config)
    torch.manual_seed(1)
    batch = next(iter(DataLoader(make_dataset(store, config, "train"), batch_size=2)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()
    with torch.no_grad():
        first = model(batch)
    model.train()
    for _ in range(200):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = model(batch)
    assert float(last["play"]) < 0.1 * float(first["play"])
    assert float(last["replay"]) < 0.1 * float(first["replay"])
    assert float(last["dynamics"]) < 0.25 * float(first["dynamics"])


def test_generate_valid_rows_polyphony_and_styles() -> None:
    torch.manual_seed(0)
    model = BiaxialLSTM(tiny_config(n_pitches=24))

    def sample(style: str | None, seed: int = 0) -> list[pd.DataFrame]:
        g = torch.Generator().manual_seed(seed)
        return generate_biaxial(
            model, 2, SampleOptions(length=12, style=style, top_k=5, top_p=0.5), generator=g
        )

    samples = sample("Bach")
    assert [s["piece_id"].unique().tolist() for s in samples] == [["sample-0"], ["sample-1"]]
    for s in samples:
        assert list(s.columns) == list(prv.PRV_COLUMNS)
        assert s.dtypes.astype(str).tolist() == ["object", "int32", "int16", "bool", "float32"]
        assert s["step"].between(0, 11).all() and s["pitch"].between(0, 23).all()
        assert s["volume"].between(0, 1).all()
        assert not s.duplicated(["step", "pitch"]).any()
        # a pitch that sounds after a silent step is an onset
        played = set(zip(s["step"], s["pitch"], strict=True))
        for step, pitch, replay in zip(s["step"], s["pitch"], s["replay"], strict=True):
            if (step - 1, pitch) not in played:
                assert replay
    assert max(s.groupby("step").size().max() for s in samples) >= 2  # polyphony
    for a, b in zip(samples, sample("Bach"), strict=True):
        pd.testing.assert_frame_equal(a, b)  # seeded: reproducible
    assert any(
        not a.equals(b) for a, b in zip(samples, sample("Chopin"), strict=True)
    )  # the style changes the music
    with pytest.raises(ValueError, match="unknown style 'Mozart'.*'Bach', 'Chopin'"):
        sample("Mozart")


def test_generate_seconds_primer_and_greedy() -> None:
    torch.manual_seed(0)
    model = BiaxialLSTM(tiny_config())
    primer = cells("p", [(0, 3, True, 0.5), (1, 3, False, 0.5), (2, 7, True, 0.9)])
    out = generate_biaxial(model, 1, SampleOptions(primer=primer, length=0))[0]
    pd.testing.assert_frame_equal(
        out.drop(columns="piece_id"), primer.drop(columns="piece_id"), check_dtype=False
    )
    a = generate_biaxial(
        model, 2, SampleOptions(primer=primer, seconds=1.0, temperature=0.0)
    )  # greedy: no generator
    b = generate_biaxial(model, 2, SampleOptions(primer=primer, seconds=1.0, temperature=0.0))
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[0].drop(columns="piece_id"), a[1].drop(columns="piece_id"))
    assert a[0]["step"].max() <= 2 + 8  # 3 primer steps + 1 s x 8 steps/s
    opening = a[0][a[0]["step"] < 3].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        opening.drop(columns="piece_id"), primer.drop(columns="piece_id"), check_dtype=False
    )


def test_checkpoint_keeps_styles_for_generation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = tiny_config()
    model = BiaxialLSTM(config)
    payload = {
        "name": "biaxial",
        "representation": "prv",
        "config": describe(config),
        "checkpoint_version": base.CHECKPOINT_VERSION,
        "step": 0,
        "state_dict": model.state_dict(),
    }
    path = save_checkpoint(payload, tmp_path / "model.pt")
    loaded, spec, _ = load_model(path, "biaxial")
    assert loaded.config.styles == ("<unk>", "Bach", "Chopin")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    pd.testing.assert_frame_equal(
        generate_biaxial(loaded, 1, SampleOptions(length=4, style="Chopin"), generator=g1)[0],
        generate_biaxial(model.eval(), 1, SampleOptions(length=4, style="Chopin"), generator=g2)[0],
    )
