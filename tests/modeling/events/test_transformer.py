"""Music Transformer: relative attention, masking, data windows, sampling, baselines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fixture_stores import model_config, shipped

from pipeline.core.params import ParamsError, from_mapping
from pipeline.modeling import attention, base
from pipeline.modeling.attention import (
    RelativeSelfAttention,
    causal_mask,
    relative_embeddings,
    relative_logits,
    skew,
)
from pipeline.modeling.base import StoreData
from pipeline.modeling.events import baseline, make_dataset
from pipeline.modeling.events.sampling import (
    ContextWindow,
    generate_transformer,
    reencode_chunk,
    sample_next,
)
from pipeline.modeling.events.transformer import MusicTransformer, TransformerConfig
from pipeline.modeling.sampling import SampleOptions, filter_logits
from pipeline.representations.events import BOS, EOS, PAD, VOCAB_SIZE

TINY = model_config(
    "transformer",
    d_model=32,
    n_layers=2,
    n_heads=4,
    d_ff=64,
    dropout=0.0,
    max_relative_position=6,
    seq_len=32,
    sine_positions=True,
    tie_embeddings=True,
)


def _store(**splits: list[np.ndarray]) -> StoreData:
    rows = {
        split: pd.DataFrame(
            {
                "piece_id": [f"{split}-{i}" for i in range(len(seqs))],
                "tokens": [np.asarray(s, dtype=np.uint16) for s in seqs],
            }
        )
        for split, seqs in splits.items()
    }
    return StoreData(rows=rows, pieces=pd.DataFrame(), params=None)


def _random_piece(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.concatenate([[BOS], rng.integers(3, VOCAB_SIZE, n - 2), [EOS]]).astype(np.uint16)


# ---------------------------------------------------------------- relative attention


def _reference_relative_logits(q: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Direct O(L^2 D) S_rel: query i against the clipped embedding of distance i - j."""
    n = q.size(2)
    max_distance = rel.size(1) - 1
    out = torch.zeros(q.size(0), q.size(1), n, n, dtype=q.dtype)
    for i in range(n):
        for j in range(i + 1):
            e = rel[:, min(i - j, max_distance)]  # (H, Dh)
            out[:, :, i, j] = torch.einsum("bhd,hd->bh", q[:, :, i], e)
    return out


def _reference_attention(attn: RelativeSelfAttention, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape
    h, dh = attn.n_heads, attn.d_head
    q, k, v = attn.qkv(x).split(d, dim=2)
    q, k, v = (z.view(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
    s_rel = _reference_relative_logits(q, attn.rel)
    logits = (q @ k.transpose(-1, -2) + s_rel) / math.sqrt(dh)
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    weights = logits.masked_fill(future, float("-inf")).softmax(dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(b, t, d)
    return attn.proj(y)


@pytest.mark.parametrize("length", [1, 2, 5, 7, 13, 24])
def test_skewed_relative_logits_match_direct_computation(length: int) -> None:
    torch.manual_seed(length)
    max_distance = 6  # lengths above 7 exercise the clipping
    q = torch.randn(2, 3, length, 8, dtype=torch.float64)
    rel = torch.randn(3, max_distance + 1, 8, dtype=torch.float64)
    skewed = relative_logits(q, rel, length)
    expected = _reference_relative_logits(q, rel)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    assert skewed.shape == (2, 3, length, length)
    torch.testing.assert_close(skewed[..., causal], expected[..., causal], atol=1e-5, rtol=0)
    # the paper's procedure on Q E_r^T (pad the product) gives the same numbers
    paper = skew(torch.einsum("bhqd,hkd->bhqk", q, relative_embeddings(rel, length)))
    torch.testing.assert_close(paper[..., causal], expected[..., causal], atol=1e-5, rtol=0)


def test_skew_of_a_cached_query_block() -> None:
    """Queries that are the last Tq of Tk positions (generation with a cache)."""
    torch.manual_seed(3)
    n_q, n_k = 4, 11
    q_all = torch.randn(1, 2, n_k, 5, dtype=torch.float64)
    rel = torch.randn(2, 7, 5, dtype=torch.float64)
    expected = _reference_relative_logits(q_all, rel)[:, :, n_k - n_q :]  # (1, 2, Tq, Tk)
    got = relative_logits(q_all[:, :, n_k - n_q :], rel, n_k)
    allowed = causal_mask(n_q, n_k, torch.device("cpu"))
    torch.testing.assert_close(got[..., allowed], expected[..., allowed], atol=1e-5, rtol=0)


@pytest.mark.parametrize("length", [3, 7, 20])
@pytest.mark.parametrize("blocked", [False, True])
def test_attention_layer_matches_reference(
    length: int, blocked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if blocked:  # windows past 2 queries take the blocked path, 3 queries a block
        monkeypatch.setattr(attention, "REFERENCE_MAX_QUERIES", 2)
        monkeypatch.setattr(attention, "BLOCK_SIZE", 3)
    torch.manual_seed(0)
    attn = RelativeSelfAttention(d_model=16, n_heads=4, max_relative_position=5, dropout=0.0)
    attn = attn.double().eval()
    x = torch.randn(2, length, 16, dtype=torch.float64)
    out, _ = attn(x)
    torch.testing.assert_close(out, _reference_attention(attn, x), atol=1e-5, rtol=0)


def test_cached_decoding_matches_full_forward() -> None:
    torch.manual_seed(0)
    model = MusicTransformer(TINY).double().eval()
    tokens = torch.randint(3, VOCAB_SIZE, (2, 19))
    full, _ = model.logits(tokens)
    chunks, past = [], None
    first, past = model.logits(tokens[:, :6])
    chunks.append(first)
    for t in range(6, 19):
        step, past = model.logits(tokens[:, t : t + 1], past, start_pos=t)
        chunks.append(step)
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-9, rtol=0)


def test_changing_a_token_never_changes_earlier_outputs() -> None:
    torch.manual_seed(0)
    model = MusicTransformer(TINY).eval()
    tokens = torch.randint(3, VOCAB_SIZE, (1, 30))
    changed = tokens.clone()
    changed[0, 17] = (tokens[0, 17] + 5) % (VOCAB_SIZE - 3) + 3
    with torch.no_grad():
        a, _ = model.logits(tokens)
        b, _ = model.logits(changed)
    torch.testing.assert_close(a[:, :17], b[:, :17], atol=0, rtol=0)
    assert not torch.allclose(a[:, 17], b[:, 17])  # the change is visible from t on


# ---------------------------------------------------------------- loss and training


def test_pad_targets_do_not_contribute_to_the_loss() -> None:
    torch.manual_seed(0)
    model = MusicTransformer(TINY).eval()
    piece = torch.tensor([BOS, 60, 300, 190, 62, 270, EOS])
    short = torch.cat([piece, torch.full((4,), PAD)])[None]  # (1, 11)
    long = torch.cat([piece, torch.full((20,), PAD)])[None]  # (1, 27)
    with torch.no_grad():
        out_short = model({"tokens": short})
        out_long = model({"tokens": long})
        logits, _ = model.logits(piece[None, :-1])
        expected = F.cross_entropy(logits[0], piece[1:])
        # an all-padding row in the batch changes nothing either
        padded_batch = torch.stack([short[0], torch.full((11,), PAD)])
        out_batch = model({"tokens": padded_batch})
    torch.testing.assert_close(out_short["nll"], expected)
    torch.testing.assert_close(out_long["nll"], expected)
    torch.testing.assert_close(out_batch["nll"], expected)
    assert set(out_short) >= {"loss", "nll", "accuracy", "n_units"}
    assert int(out_short["n_units"]) == int(out_long["n_units"]) == 6


def test_all_padding_batch_gives_zero_loss_with_gradient() -> None:
    model = MusicTransformer(TINY)
    out = model({"tokens": torch.full((2, 9), PAD)})
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad
    out["loss"].backward()  # no error: the graph is intact


def test_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # two windows cut mid-piece (different first tokens, so no context has two targets)
    windows = np.stack([rng.permutation(np.arange(3, VOCAB_SIZE))[:33] for _ in range(2)])
    batch = {"tokens": torch.from_numpy(windows)}
    model = MusicTransformer(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(model(batch)["nll"])
    for _ in range(150):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = model(batch)
    assert first > 5.0  # ~ln(391) at initialisation
    assert float(final["nll"]) < 0.1
    assert float(final["accuracy"]) == 1.0


# ---------------------------------------------------------------- data windows


def test_evaluation_windows_predict_every_token_once() -> None:
    rng = np.random.default_rng(1)
    pieces = [_random_piece(rng, n) for n in (2, 10, 32, 33, 34, 100)]
    store = _store(test=pieces)
    data = make_dataset(store, TINY, "test")
    windows = np.stack([data[i]["tokens"].numpy() for i in range(len(data))])
    assert windows.shape[1] == TINY.seq_len + 1
    targets = windows[:, 1:][windows[:, 1:] != PAD]
    expected = np.concatenate([p[1:] for p in pieces]).astype(np.int64)
    np.testing.assert_array_equal(np.sort(targets), np.sort(expected))
    # windows are consecutive: the first of piece 5 (100 tokens) starts with BOS
    assert sum(1 for w in windows if w[0] == BOS) == len(pieces)


def test_training_windows_are_random_but_reproducible() -> None:
    rng = np.random.default_rng(2)
    pieces = [_random_piece(rng, 200), _random_piece(rng, 10)]
    store = _store(train=pieces)
    torch.manual_seed(7)
    a = make_dataset(store, TINY, "train")
    torch.manual_seed(7)
    b = make_dataset(store, TINY, "train")
    assert len(a) == math.ceil(199 / TINY.seq_len) + 1
    first = [a[i]["tokens"] for i in range(len(a))]
    np.testing.assert_array_equal(
        np.stack(first), np.stack([b[i]["tokens"] for i in range(len(b))])
    )
    assert torch.equal(a[0]["tokens"], first[0])  # a pure function of (seed, epoch, index)
    a.set_epoch(1)
    assert not torch.equal(a[0]["tokens"], first[0])  # a new epoch moves the windows
    short = first[-1].numpy()  # the 10-token piece, padded
    np.testing.assert_array_equal(short[:10], pieces[1])
    assert (short[10:] == PAD).all()
    for w in first[:-1]:  # every window of the long piece is a contiguous slice of it
        start = int(
            np.flatnonzero(
                np.lib.stride_tricks.sliding_window_view(
                    pieces[0].astype(np.int64), TINY.seq_len + 1
                )
                .__eq__(w.numpy())
                .all(axis=1)
            )[0]
        )
        assert 0 <= start <= 200 - TINY.seq_len - 1


def test_out_of_vocabulary_tokens_name_the_piece() -> None:
    store = _store(train=[np.array([BOS, 400, EOS])])
    with pytest.raises(ValueError, match="train-0"):
        make_dataset(store, TINY, "train")


# ---------------------------------------------------------------- sampling


def test_top_p_keeps_the_minimal_nucleus() -> None:
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.75) == [False, True, False, True]  # 0.5 + 0.3 >= 0.75
    assert kept(0.5) == [False, True, False, False]  # the top token alone reaches 0.5
    assert kept(0.4) == [False, True, False, False]  # the top token is always kept
    assert kept(0.9) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    # kept logits are unchanged, so renormalising gives the nucleus distribution
    nucleus = filter_logits(logits, top_p=0.75).softmax(-1)
    torch.testing.assert_close(nucleus, torch.tensor([[0.0, 0.625, 0.0, 0.375]]))


def test_top_k_keeps_exactly_k() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 3.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    assert torch.isfinite(filter_logits(logits, top_k=1))[0].tolist() == [
        False,
        True,
        False,
        False,
        False,
    ]


def test_sampling_follows_the_filtered_distribution() -> None:
    logits = torch.full((20000, VOCAB_SIZE), float("-inf"))
    logits[:, [5, 6, 7]] = torch.tensor([0.1, 0.2, 0.7]).log()
    logits[:, PAD] = logits[:, BOS] = 10.0  # never drawn, however likely
    gen = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, gen)
    freq = torch.bincount(drawn, minlength=VOCAB_SIZE).double() / len(drawn)
    torch.testing.assert_close(
        freq[[5, 6, 7]], torch.tensor([0.1, 0.2, 0.7]).double(), atol=0.015, rtol=0
    )
    assert freq.sum() == pytest.approx(1.0) and freq[[PAD, BOS]].sum() == 0
    assert set(sample_next(logits, gen, top_p=0.65).tolist()) == {7}
    assert set(sample_next(logits, gen, top_k=2).tolist()) == {6, 7}
    # temperature sharpens: at 0.25 the odds of 7 against 6 are (0.7/0.2)^4 = 150
    sharp = sample_next(logits, gen, temperature=0.25)
    assert (sharp == 7).double().mean() > 0.98


def test_top_k_one_is_deterministic_greedy() -> None:
    torch.manual_seed(0)
    model = MusicTransformer(TINY)
    runs = [
        generate_transformer(
            model,
            2,
            SampleOptions(top_k=1, length=25),
            generator=torch.Generator().manual_seed(seed),
        )
        for seed in (1, 2)
    ]
    greedy = generate_transformer(
        model, 1, SampleOptions(temperature=0.0, length=25), generator=None
    )[0]["tokens"][0]
    for rows in runs:
        for row in rows:
            np.testing.assert_array_equal(row["tokens"][0], greedy)
    # greedy really is the argmax of the model's next-token distribution
    tokens = torch.from_numpy(greedy.astype(np.int64))[None]
    with torch.no_grad():
        logits, _ = model.logits(tokens[:, :-1])
    logits[..., PAD] = logits[..., BOS] = float("-inf")
    n = min(25, tokens.size(1) - 1)
    np.testing.assert_array_equal(logits[0, :n].argmax(-1).numpy(), greedy[1 : n + 1])


def test_generation_continues_the_primer() -> None:
    torch.manual_seed(0)
    model = MusicTransformer(TINY)
    primer_tokens = np.array([BOS, 359 + 20, 3 + 60, 258 + 50, 131 + 60, EOS], dtype=np.uint16)
    primer = pd.DataFrame({"piece_id": ["p"], "tokens": [primer_tokens]})
    rows = generate_transformer(
        model,
        3,
        SampleOptions(primer=primer, length=40, top_p=0.9),
        generator=torch.Generator().manual_seed(0),
    )
    assert len(rows) == 3
    for i, row in enumerate(rows):
        assert list(row.columns) == ["piece_id", "tokens"]
        assert row["piece_id"][0] == f"sample-{i}"
        tokens = row["tokens"][0]
        assert tokens.dtype == np.uint16
        np.testing.assert_array_equal(tokens[:5], primer_tokens[:5])  # primer minus its EOS
        assert 5 < len(tokens) <= 5 + 40 + 1
        assert tokens[-1] == EOS
        assert tokens.max() < VOCAB_SIZE
        assert not np.isin(tokens[1:], [PAD, BOS]).any()
    # a different seed gives a different continuation
    other = generate_transformer(
        model,
        1,
        SampleOptions(primer=primer, length=40),
        generator=torch.Generator().manual_seed(1),
    )
    assert not np.array_equal(other[0]["tokens"][0], rows[0]["tokens"][0])


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats per row of two (B, V) logit tensors."""
    log_p, log_q = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.mark.parametrize("sine", [True, False])
def test_context_past_seq_len_equals_a_fresh_forward_pass(sine: bool) -> None:
    """Every next-token distribution is that of a fresh pass over a training-size window."""
    torch.manual_seed(0)
    config = TransformerConfig(**{**TINY.__dict__, "sine_positions": sine})
    model = MusicTransformer(config).double().eval()
    seq_len, chunk = config.seq_len, reencode_chunk(config.seq_len)
    tokens = torch.randint(3, VOCAB_SIZE, (2, 4 * seq_len + 7))
    sliding_kl = []
    with torch.no_grad():
        context = ContextWindow(model, tokens[:, :5])
        past = None
        for t in range(5, tokens.size(1)):
            logits = context.push(tokens[:, t])
            n = context.window.size(1)
            assert seq_len - chunk < n <= seq_len or t < seq_len  # a training-size window
            torch.testing.assert_close(context.window, tokens[:, t + 1 - n : t + 1])
            fresh, _ = model.logits(context.window)
            torch.testing.assert_close(logits, fresh[:, -1], atol=1e-9, rtol=0)
            assert float(_kl(fresh[:, -1], logits).max()) < 1e-12
            # the old sliding cache (the last seq_len - 1 positions) at the same point
            if past is None:
                slide, past = model.logits(tokens[:, : t + 1])
            else:
                past = [(k[:, :, -(seq_len - 1) :], v[:, :, -(seq_len - 1) :]) for k, v in past]
                slide, past = model.logits(tokens[:, t : t + 1], past, start_pos=t)
            if t >= 2 * seq_len:
                window = tokens[:, t + 1 - seq_len : t + 1]
                sliding_kl.append(float(_kl(model.logits(window)[0][:, -1], slide[:, -1]).mean()))
    assert context.reencodes == (tokens.size(1) - 1 - seq_len) // chunk + 1
    # what the re-encoding fixes: the sliding cache is measurably off a fresh window
    assert np.mean(sliding_kl) > 1e-4


def test_sampler_past_seq_len_draws_from_fresh_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """generate_transformer over 3 windows' length: each draw's logits are a fresh pass's."""
    from pipeline.modeling.events import sampling

    seen: list[torch.Tensor] = []

    def recording(logits: torch.Tensor, *args: object) -> torch.Tensor:
        seen.append(logits.clone())
        return sample_next(logits, *args)

    monkeypatch.setattr(sampling, "sample_next", recording)
    torch.manual_seed(1)
    model = MusicTransformer(TINY).double().eval()
    seq_len, keep = TINY.seq_len, TINY.seq_len - reencode_chunk(TINY.seq_len) + 1
    primer_tokens = np.concatenate([[BOS], np.random.default_rng(0).integers(3, 259, 40)])
    primer = pd.DataFrame({"piece_id": ["p"], "tokens": [primer_tokens.astype(np.uint16)]})
    rows = generate_transformer(
        model,
        1,
        SampleOptions(primer=primer, length=3 * seq_len),
        generator=torch.Generator().manual_seed(0),
    )
    row = rows[0]["tokens"][0].astype(np.int64)
    assert len(seen) > 2 * seq_len  # well past seq_len (no early EOS)
    width = min(len(primer_tokens), seq_len)  # the model sees the last seq_len primer tokens
    for i, logits in enumerate(seen):
        t = len(primer_tokens) + i  # the position this draw fills
        with torch.no_grad():
            fresh, _ = model.logits(torch.from_numpy(row[t - width : t])[None])
        torch.testing.assert_close(logits, fresh[:, -1], atol=1e-9, rtol=0)
        width += 1  # row[t] joins the window; past seq_len it is re-encoded shorter
        if width > seq_len:
            width = keep


def _always(token: int) -> MusicTransformer:
    """A model whose next token is `token` with probability ~1, whatever the input."""
    model = MusicTransformer(TransformerConfig(**{**TINY.__dict__, "tie_embeddings": False}))
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(1.0)
        model.head.weight.zero_()
        model.head.weight[token] = 100.0
    return model


def test_generation_stops_after_seconds_of_time_shifts() -> None:
    one_second = 258 + 100
    rows = generate_transformer(
        _always(one_second),
        1,
        SampleOptions(seconds=3.0),
        generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_array_equal(rows[0]["tokens"][0], [BOS] + [one_second] * 3 + [EOS])


def test_generation_stops_at_eos() -> None:
    rows = generate_transformer(
        _always(EOS), 2, SampleOptions(length=50), generator=torch.Generator().manual_seed(0)
    )
    for row in rows:
        np.testing.assert_array_equal(row["tokens"][0], [BOS, EOS])


# ---------------------------------------------------------------- baselines, registry


def _fixture_tokens(path: Path) -> np.ndarray:
    from pipeline.midi import parse_midi
    from pipeline.representations.events import encode_piece

    return np.asarray(encode_piece(parse_midi(path).notes), dtype=np.uint16)


def test_baselines_on_real_events(fixtures_dir: Path) -> None:
    files = sorted((fixtures_dir / "maestro").glob("miditok_Maestro_*.mid"))
    assert len(files) >= 4, f"fixtures missing under {fixtures_dir}"
    pieces = [_fixture_tokens(f) for f in files[:4]]
    store = _store(train=pieces[:3], test=pieces[3:])
    numbers = baseline(store, TINY)
    assert set(numbers) == {"baseline_nll", "unigram_nll", "bigram_nll"}
    assert all(math.isfinite(v) and v > 0 for v in numbers.values())
    assert numbers["bigram_nll"] < numbers["unigram_nll"]
    assert numbers["baseline_nll"] == numbers["bigram_nll"]
    assert numbers["unigram_nll"] < math.log(VOCAB_SIZE)  # better than uniform


def test_bigram_baseline_exact_on_a_tiny_corpus() -> None:
    train = [np.array([BOS, 5, 6, 5, 6, EOS])]
    test = [np.array([BOS, 5, 6, EOS])]
    numbers = baseline(_store(train=train, test=test), TINY)
    counts = np.zeros(VOCAB_SIZE)
    for t in (5, 6, 5, 6, EOS):
        counts[t] += 1
    unigram = (counts + 1) / (counts.sum() + VOCAB_SIZE)
    expected_unigram = -np.mean(np.log(unigram[[5, 6, EOS]]))
    assert numbers["unigram_nll"] == pytest.approx(expected_unigram)
    # bigram rows: BOS->5 (1), 5->6 (2), 6->5 (1), 6->EOS (1); prior mass 10 spread by unigram
    p = [
        (1 + 10 * unigram[5]) / (1 + 10),  # BOS -> 5
        (2 + 10 * unigram[6]) / (2 + 10),  # 5 -> 6
        (1 + 10 * unigram[EOS]) / (2 + 10),  # 6 -> EOS
    ]
    assert numbers["bigram_nll"] == pytest.approx(-np.mean(np.log(p)))


def test_registered_spec_and_params() -> None:
    spec = base.get("transformer")
    assert spec.representation == "events"
    assert spec.model_cls is MusicTransformer
    section = shipped("models.transformer")
    section.pop("representation"), section.pop("network"), section.pop("train")
    config = from_mapping({**section, "d_model": 64}, spec.config_cls, "models.transformer")
    assert config.d_model == 64 and config.seq_len == model_config("transformer").seq_len
    with pytest.raises(ParamsError, match="divisible"):
        from_mapping(
            {**section, "d_model": 30, "n_heads": 4}, TransformerConfig, "models.transformer"
        )
    with pytest.raises(ParamsError, match="models.transformer.depth"):
        from_mapping({**section, "depth": 3}, TransformerConfig, "models.transformer")
