"""acpo_core.segmentation (§2): hand-worked examples on the real Qwen2.5 tokenizer, properties, bad input.

Conventions of the hand-worked examples: every token has entropy 0 except a few "peaks" with the entropies given.
``_ratio_for(n, k)`` picks ``entropy_top_ratio`` so that exactly the k peaks of an n-token response are in the
high-entropy set E: the 1 - ratio quantile then lands strictly between 0 and the smallest peak.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Sequence

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acpo_core.config import DEFAULT_MARKERS, SegmentationConfig
from acpo_core.segmentation import StepSegmentation, VocabTables, entropy_threshold, segment_steps
from recipe.acpo.offline_models import load_qwen25_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_qwen25_tokenizer()


@pytest.fixture(scope="module")
def tables(tokenizer) -> VocabTables:
    return VocabTables.from_tokenizer(tokenizer)


def _ratio_for(num_tokens: int, num_peaks: int) -> float:
    # rank q * (n - 1) = n - k - 0.5 lies between the largest zero (n - k - 1) and the smallest peak (n - k).
    return (num_peaks - 0.5) / (num_tokens - 1)


def _segment_text(
    tokenizer, tables: VocabTables, text: str, peaks: dict[str, float], **cfg_overrides
) -> tuple[list[str], StepSegmentation]:
    """Segment one response; ``peaks`` maps "piece@occurrence" (or a piece, its first occurrence) to an entropy."""
    ids = tokenizer.encode(text)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    entropy = torch.zeros(1, len(ids))
    for name, value in peaks.items():
        entropy[0, _position(pieces, name)] = value
    cfg = SegmentationConfig(**{"entropy_top_ratio": _ratio_for(len(ids), len(peaks)), **cfg_overrides})
    result = segment_steps(torch.tensor([ids]), entropy, torch.ones(1, len(ids), dtype=torch.long), tables, cfg)
    _assert_well_formed(result, [len(ids)], cfg)
    return pieces, result


def _position(pieces: Sequence[str], name: str) -> int:
    piece, _, occurrence = name.partition("@")
    hits = [i for i, p in enumerate(pieces) if p == piece]
    assert hits, f"{piece!r} not in {pieces}"
    return hits[int(occurrence or 0)]


def _boundaries(result: StepSegmentation, row: int = 0) -> list[int]:
    k = int(result.num_steps[row])
    return result.boundaries[row, : k + 1].tolist()


def _assert_well_formed(result: StepSegmentation, lengths: Sequence[int], cfg: SegmentationConfig) -> None:
    """The output contract: boundaries 0 = c_0 < ... < c_K = T_b at least min_step_tokens apart, K <= max_steps,
    -1 after c_K; every valid token in exactly the step [c_i, c_{i+1}) that holds it; -1 on padding."""
    batch, width = result.step_index.shape
    assert result.boundaries.shape == (batch, cfg.max_steps + 1)
    assert result.marker_boundary.shape == (batch, cfg.max_steps)
    for b, length in enumerate(lengths):
        k = int(result.num_steps[b])
        assert 1 <= k <= cfg.max_steps
        row = result.boundaries[b].tolist()
        assert row[0] == 0 and row[k] == length and all(c == -1 for c in row[k + 1 :])
        if length == 0:
            assert k == 1 and row[:2] == [0, 0]
        else:
            gaps = [row[i + 1] - row[i] for i in range(k)]
            assert all(g >= cfg.min_step_tokens for g in gaps) if k > 1 else gaps == [length]
        expected = torch.full((width,), -1, dtype=torch.long)
        for i in range(k):
            expected[row[i] : row[i + 1]] = i
        assert torch.equal(result.step_index[b], expected)
        assert not result.marker_boundary[b, 0] and not result.marker_boundary[b, k:].any()


# ---------------------------------------------------------------------------------------------------------------------
# Hand-worked examples


def test_peak_near_a_sentence_start_opens_a_step_at_that_sentence(tokenizer, tables) -> None:
    # Tokens: We(0) Ġadd Ġthe Ġtwo Ġnumbers .Ċ(5) The(6) Ġtotal(7) Ġis Ġ 5 .(11) ĠWe(12) Ġthen(13) Ġdouble(14) ...
    # Sentence starts: 0; "The" (6, the text before it ends with a newline); "ĠWe" (12, "." then a token beginning
    # with white space). Peak "Ġtotal" (7) is 1 token into its sentence -> candidate 6; peak "Ġdouble" (14) is 2
    # tokens into its sentence -> candidate 12. With min_step_tokens = 3 both are kept (6 - 0, 12 - 6, 20 - 12 >= 3).
    pieces, result = _segment_text(
        tokenizer,
        tables,
        "We add the two numbers.\nThe total is 5. We then double it to get ten.",
        {"Ġtotal": 2.0, "Ġdouble": 3.0},
        min_step_tokens=3,
    )
    assert pieces[6] == "The" and pieces[12] == "ĠWe"
    assert _boundaries(result) == [0, 6, 12, 20]
    assert result.step_index[0].tolist() == [0] * 6 + [1] * 6 + [2] * 8
    assert result.marker_boundary[0].tolist() == [False] * 24


def test_peak_beyond_the_align_window_is_not_moved_to_its_sentence(tokenizer, tables) -> None:
    # "Ġget" (17) is 5 tokens after the sentence start "ĠWe" (12): with align_window = 4 it is too far, and its word
    # "get" is no marker, so it is dropped. With align_window = 5 it maps to 12.
    text = "We add the two numbers.\nThe total is 5. We then double it to get ten."
    _, far = _segment_text(tokenizer, tables, text, {"Ġget": 2.0}, min_step_tokens=3, align_window=4)
    _, near = _segment_text(tokenizer, tables, text, {"Ġget": 2.0}, min_step_tokens=3, align_window=5)
    assert _boundaries(far) == [0, 20]
    assert _boundaries(near) == [0, 12, 20]


def test_period_inside_a_number_is_not_a_sentence_end(tokenizer, tables) -> None:
    # "... is 3.5 and ..." -> Ġ(6) 3(7) .(8) 5(9): the token after the period ("5") does not begin with white space,
    # so no sentence starts at 9; the peak on "5" is 9 tokens from the sentence start 0 and its word "3.5" is not a
    # marker: dropped, one step.
    pieces, in_number = _segment_text(
        tokenizer, tables, "The mean value of x is 3.5 and it stays 3.5 here", {"5": 2.0}, min_step_tokens=2
    )
    assert pieces[7:10] == ["3", ".", "5"]
    assert _boundaries(in_number) == [0, 18]
    # "... is 3. 5 is ..." -> 3(7) .(8) Ġ(9) 5(10): "Ġ" begins with white space after a period, a sentence starts at
    # 9, and the peak on "5" one token later opens a step there.
    pieces, after_period = _segment_text(
        tokenizer, tables, "The mean value of x is 3. 5 is the value of y", {"5": 2.0}, min_step_tokens=2
    )
    assert pieces[8:11] == [".", "Ġ", "5"]
    assert _boundaries(after_period) == [0, 9, 16]


def test_period_inside_dollar_math_is_not_a_sentence_end(tokenizer, tables) -> None:
    # We(0) Ġknow Ġ$(2) y Ġ= Ġx .(6) Ġz(7) $(8) Ġholds Ġand Ġalso Ġ$(12) x $.(14) ĠThen(15) Ġwe Ġstop .
    # "Ġz" begins with white space after "." but one $ precedes it (inside math): not a sentence start, and a peak on
    # it (7 tokens from 0, word "z$") is dropped. "$." closes the second math span (four $ before "ĠThen", even), so
    # "ĠThen" starts a sentence and a peak on "Ġwe" (one token later) opens a step at 15.
    text = "We know $y = x. z$ holds and also $x$. Then we stop."
    pieces, result = _segment_text(tokenizer, tables, text, {"Ġz": 3.0, "Ġwe": 2.0}, min_step_tokens=2)
    assert pieces[6:9] == [".", "Ġz", "$"] and pieces[14:16] == ["$.", "ĠThen"]
    assert _boundaries(result) == [0, 15, 19]


def test_display_math_and_escaped_dollars_count_as_one_and_zero_delimiters(tokenizer, tables) -> None:
    # We(0) Ġknow Ġ$$(2) y Ġ= Ġx .(6) Ġz(7) $$(8) Ġholds Ġand Ġ\$(11) 5 .(13) ĠThen(14) Ġwe Ġstop .
    # "$$" is one delimiter: "Ġz" is inside display math (peak dropped). "\$" is an escaped (money) dollar, not a
    # delimiter: after "$$...$$" and "\$5." the text is outside math, so "ĠThen" starts a sentence.
    text = "We know $$y = x. z$$ holds and \\$5. Then we stop."
    pieces, result = _segment_text(tokenizer, tables, text, {"Ġz": 3.0, "Ġwe": 2.0}, min_step_tokens=2)
    assert pieces[2] == "Ġ$$" and pieces[8] == "$$" and pieces[11] == "Ġ\\$" and pieces[14] == "ĠThen"
    assert _boundaries(result) == [0, 14, 18]
    # Counting single dollars instead would put "Ġz" outside math (two $ before it): a sentence start at 7.


def test_dollar_run_split_across_tokens_is_one_delimiter(tokenizer, tables) -> None:
    # Tokens chosen by hand: Ġ$ and $ form one "$$" (display math opens), so the period in "x. y" is inside math.
    pieces = ["We", "Ġknow", "Ġ$", "$", "x", ".", "Ġy", "$$", "Ġand", "Ġso", "Ġon"]
    ids = tokenizer.convert_tokens_to_ids(pieces)
    entropy = torch.zeros(1, len(ids))
    entropy[0, 7] = 2.0  # one token after "Ġy" (6), which would start a sentence if "$$" were two delimiters
    cfg = SegmentationConfig(entropy_top_ratio=_ratio_for(len(ids), 1), min_step_tokens=2)
    result = segment_steps(torch.tensor([ids]), entropy, torch.ones(1, len(ids)), tables, cfg)
    assert _boundaries(result) == [0, len(ids)]


def test_far_peak_in_a_transition_marker_opens_a_step_at_the_marker_word(tokenizer, tables) -> None:
    # We(0) Ġcompute Ġall Ġof Ġthe Ġterms Ġcarefully ,(7) Ġso(8) Ġthe Ġanswer Ġmust Ġbe Ġeven Ġand
    # ĠAlternatively(15) ,(16) Ġwe Ġcould ĠWAIT(19) Ġfor Ġit          (one sentence: its only start is 0)
    # - peak on "Ġso" (8): word "so" is a marker -> candidate 8, score 1.0
    # - peak on "," (16): its word is "Alternatively," which starts at 15; stripped of punctuation it is a marker
    #   -> candidate 15, score 2.0
    # - peak on "ĠWAIT" (19): markers are case-insensitive -> candidate 19, score 3.0
    # - peak on "Ġanswer" (10): word "answer" is no marker -> dropped
    text = "We compute all of the terms carefully, so the answer must be even and Alternatively, we could WAIT for it"
    peaks = {"Ġso": 1.0, ",@1": 2.0, "ĠWAIT": 3.0, "Ġanswer": 4.0}
    pieces, result = _segment_text(tokenizer, tables, text, peaks, min_step_tokens=2)
    assert pieces[15:17] == ["ĠAlternatively", ","]
    assert _boundaries(result) == [0, 8, 15, 19, 22]
    assert result.marker_boundary[0, :4].tolist() == [False, True, True, True]
    # With min_step_tokens = 5, 19 is too close to the end (22 - 19 = 3); then 15 (2.0) and 8 (1.0, 7 from 15) fit.
    _, spaced = _segment_text(tokenizer, tables, text, peaks, min_step_tokens=5)
    assert _boundaries(spaced) == [0, 8, 15, 22]
    # With min_step_tokens = 8, only 8 fits (15 is 7 from the end).
    _, sparse = _segment_text(tokenizer, tables, text, peaks, min_step_tokens=8)
    assert _boundaries(sparse) == [0, 8, 22]


def test_marker_split_over_several_tokens_is_recognised(tokenizer, tables) -> None:
    # "ALTERNATIVELY" is five tokens ĠAL TERN AT IV ELY; a peak on "IV" maps to the word's first token "ĠAL".
    text = "We could compute every single one of these terms by hand, ALTERNATIVELY we use the formula"
    pieces, result = _segment_text(tokenizer, tables, text, {"IV": 2.0}, min_step_tokens=2)
    start = _position(pieces, "ĠAL")
    assert pieces[start : start + 5] == ["ĠAL", "TERN", "AT", "IV", "ELY"]
    assert _boundaries(result) == [0, start, len(pieces)]
    assert bool(result.marker_boundary[0, 1])


def test_boundary_counts_as_a_marker_boundary_when_its_best_peak_came_through_the_marker_rule(
    tokenizer, tables
) -> None:
    # "... two. ALTERNATIVELY we ..." -> .(k-1) ĠAL(k) TERN AT IV ELY(k+4): "ĠAL" is both a sentence start and the
    # start of a marker word. With align_window = 2, a peak on "TERN" (k+1) maps to k by the sentence rule and a peak
    # on "ELY" (k+4) maps to k by the marker rule. The boundary is a marker boundary only when the marker-rule peak
    # is strictly the higher one.
    text = "We could do this by hand for one or two. ALTERNATIVELY we use the formula"
    pieces = tokenizer.tokenize(text)
    k = pieces.index("ĠAL")
    assert pieces[k - 1 : k + 5] == [".", "ĠAL", "TERN", "AT", "IV", "ELY"]
    for sentence_peak, marker_peak, expected in ((2.0, 3.0, True), (3.0, 2.0, False), (2.0, 2.0, False)):
        _, result = _segment_text(
            tokenizer, tables, text, {"TERN": sentence_peak, "ELY": marker_peak}, min_step_tokens=2, align_window=2
        )
        assert _boundaries(result) == [0, k, len(pieces)]
        assert bool(result.marker_boundary[0, 1]) is expected


def test_quoted_and_bracketed_markers_count_but_contractions_and_inner_punctuation_do_not(tokenizer, tables) -> None:
    # Words of this text with their first token: "“Wait,”" (Ġ“ Wait ,” : stripped -> "wait", a marker);
    # "Let's" (ĠLet 's : "let's" is not "let"); "(so)" (Ġ( so ) -> "so"); "so-called" (Ġso -called -> no);
    # "s.o" (Ġs .o -> inner punctuation, no). Each peak is on the word's last token, far from the sentence start 0.
    text = "Then he paused and said “Wait,” and Let's see (so) this so-called s.o thing"
    ids = tokenizer.encode(text)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    words = {"wait": ("ĠâĢľ", ",âĢĿ"), "lets": ("ĠLet", "'s"), "so": ("Ġ(", ")"), "socalled": ("Ġso", "-called")}
    words["s.o"] = ("Ġs", ".o")
    expected_marker = {"wait": True, "lets": False, "so": True, "socalled": False, "s.o": False}
    for name, (first, last) in words.items():
        _, result = _segment_text(tokenizer, tables, text, {last: 2.0}, min_step_tokens=2)
        expected = [0, _position(pieces, first), len(ids)] if expected_marker[name] else [0, len(ids)]
        assert _boundaries(result) == expected, name


def test_special_token_is_neither_a_word_nor_a_sentence_end(tokenizer, tables) -> None:
    # A peak on the end-of-turn token (11 tokens from the sentence start 0) is dropped: it is not a word.
    text = "We go on and on and on and on and on<|im_end|>"
    pieces, result = _segment_text(tokenizer, tables, text, {"<|im_end|>": 2.0}, min_step_tokens=2)
    assert pieces[-1] == "<|im_end|>"
    assert _boundaries(result) == [0, 12]


def test_greedy_selection_by_score_respects_min_distance_and_both_ends(tokenizer, tables) -> None:
    # Sentence starts every 6 tokens: "Ġa Ġb Ġc Ġd Ġe." repeated; a peak on each sentence's first token.
    # Sentences start at 0, 6, 12, 18, 24; the response is 30 tokens. Scores 6:1, 12:3, 18:2, 24:4.
    text = "a b c d e. a b c d e. a b c d e. a b c d e. a b c d e."
    ids = tokenizer.encode(text)
    assert len(ids) == 30 and [tokenizer.convert_ids_to_tokens(ids[i]) for i in (6, 12, 18, 24)] == ["Ġa"] * 4
    entropy = torch.zeros(1, 30)
    entropy[0, [6, 12, 18, 24]] = torch.tensor([1.0, 3.0, 2.0, 4.0])
    mask = torch.ones(1, 30, dtype=torch.long)

    def run(**overrides) -> list[int]:
        cfg = SegmentationConfig(entropy_top_ratio=_ratio_for(30, 4), **overrides)
        result = segment_steps(torch.tensor([ids]), entropy, mask, tables, cfg)
        _assert_well_formed(result, [30], cfg)
        return _boundaries(result)

    # min 6: all four are 6 apart and 6 from both ends.
    assert run(min_step_tokens=6) == [0, 6, 12, 18, 24, 30]
    # min 7: 24 is only 6 from T = 30 and 6 only 6 from 0: both ineligible; 12 (3.0) is kept, then 18 (2.0) is 6
    # from 12: dropped.
    assert run(min_step_tokens=7) == [0, 12, 30]
    # min 12: 24 (4.0) is 6 from T: ineligible; 12 (3.0) kept; 18 (2.0) and 6 (1.0) too close to 12 or 0.
    assert run(min_step_tokens=12) == [0, 12, 30]
    # max_steps 3 keeps the two best boundaries that fit: 24 (4.0) then 12 (3.0).
    assert run(min_step_tokens=6, max_steps=3) == [0, 12, 24, 30]
    # max_steps 1: one step whatever the peaks.
    assert run(min_step_tokens=6, max_steps=1) == [0, 30]


def test_equal_scores_prefer_the_earlier_candidate(tokenizer, tables) -> None:
    text = "a b c d e. a b c d e. a b c d e. a b c d e. a b c d e."
    ids = tokenizer.encode(text)
    entropy = torch.zeros(1, 30)
    entropy[0, [12, 18]] = 2.0  # a tie 6 tokens apart with min_step_tokens 7: the earlier (12) wins
    cfg = SegmentationConfig(entropy_top_ratio=_ratio_for(30, 2), min_step_tokens=7)
    result = segment_steps(torch.tensor([ids]), entropy, torch.ones(1, 30), tables, cfg)
    assert _boundaries(result) == [0, 12, 30]


def test_empty_response_is_one_empty_step(tables) -> None:
    ids = torch.tensor([[5, 7, 9], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    entropy = torch.tensor([[0.1, 0.2, 0.3], [float("nan")] * 3])  # padding entropy is never read
    cfg = SegmentationConfig()
    result = segment_steps(ids, entropy, mask, tables, cfg)
    _assert_well_formed(result, [3, 0], cfg)
    assert result.num_steps.tolist() == [1, 1]
    assert result.boundaries[1, :3].tolist() == [0, 0, -1]
    assert result.step_index[1].tolist() == [-1, -1, -1]
    # A batch of width 0 (every response empty) and a batch of no responses.
    for shape in ((2, 0), (0, 3)):
        result = segment_steps(
            torch.zeros(shape, dtype=torch.long), torch.zeros(shape), torch.zeros(shape), tables, cfg
        )
        assert result.step_index.shape == shape and result.boundaries.shape == (shape[0], cfg.max_steps + 1)
        assert result.num_steps.tolist() == [1] * shape[0]


def test_batch_scope_takes_one_threshold_over_all_valid_tokens(tokenizer, tables) -> None:
    # Row 0 is calm (entropy 0.1 with one bump of 0.2 one token after the sentence start 12), row 1 has one large
    # peak (5.0, one token after the sentence start 18). Ratio 0.01: per response the rank is 0.99 * 29 = 28.71, so
    # each row's threshold lies between 0.1 and its top token, which opens a step. Over the batch the rank is
    # 0.99 * 59 = 58.41: the threshold 0.2 + 0.41 * 4.8 lies above row 0's bump, which opens nothing.
    text = "a b c d e. a b c d e. a b c d e. a b c d e. a b c d e."
    ids = torch.tensor([tokenizer.encode(text)] * 2)
    entropy = torch.full((2, 30), 0.1)
    entropy[0, 13] = 0.2
    entropy[1, 19] = 5.0
    mask = torch.ones(2, 30)
    for scope, expected_row0 in (("response", [0, 12, 30]), ("batch", [0, 30])):
        cfg = SegmentationConfig(entropy_top_ratio=0.01, quantile_scope=scope, min_step_tokens=6)
        result = segment_steps(ids, entropy, mask, tables, cfg)
        assert _boundaries(result, 0) == expected_row0, scope
        assert _boundaries(result, 1) == [0, 18, 30], scope


def test_vocab_tables_describe_qwen_tokens(tokenizer, tables) -> None:
    def flags(piece: str) -> dict[str, object]:
        i = tokenizer.convert_tokens_to_ids(piece)
        return {
            name: getattr(tables, name)[i].item()
            for name in (
                "is_special",
                "starts_with_space",
                "ends_with_newline",
                "ends_sentence_punct",
                "has_word_text",
                "closes_word",
                "dollar_runs",
            )
        }

    assert tables.vocab_size == len(tokenizer) == 151665
    assert flags("Ġ") == dict(flags("Ġ"), starts_with_space=True, has_word_text=False)
    assert flags(".Ċ") == dict(flags(".Ċ"), ends_with_newline=True, ends_sentence_punct=False, closes_word=True)
    assert flags(".")["ends_sentence_punct"] and flags(":")["ends_sentence_punct"]
    assert flags("ĠSo")["starts_with_space"] and not flags("So")["starts_with_space"]
    assert [flags(p)["dollar_runs"] for p in ("$", "Ġ$$", "$.", "Ġ\\$")] == [1, 1, 1, 0]
    assert flags("<|im_end|>") == dict(flags("<|im_end|>"), is_special=True, has_word_text=False)
    assert tables.markers == DEFAULT_MARKERS


def test_vocab_tables_read_sentencepiece_style_pieces() -> None:
    # A SentencePiece-style vocabulary ("▁" marks a leading space, <0x0A> is the newline byte), built offline.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "▁So", ",", "▁we", "<0x0A>", "▁stop", ".", "▁Al", "tern", "atively"]
    backend = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    tables = VocabTables.from_tokenizer(tokenizer)
    assert tables.vocab_size == 11
    assert tables.starts_with_space.tolist() == [False, True, False, True, True, True, False, True, False, False, False]
    assert tables.ends_with_newline.nonzero().flatten().tolist() == [4]
    assert tables.is_special.nonzero().flatten().tolist() == [0, 10]
    # "▁Al tern atively ," (positions 8-11) is the marker "Alternatively,": a far peak on "," opens a step at 8.
    ids = torch.tensor([[1, 3, 3, 3, 3, 3, 5, 3, 7, 8, 9, 2, 3, 5, 6]])
    entropy = torch.zeros(1, 15)
    entropy[0, 11] = 1.0
    cfg = SegmentationConfig(entropy_top_ratio=_ratio_for(15, 1), min_step_tokens=2)
    result = segment_steps(ids, entropy, torch.ones(1, 15), tables, cfg)
    assert _boundaries(result) == [0, 8, 15]


def test_entropy_threshold_matches_torch_quantile() -> None:
    generator = torch.Generator().manual_seed(0)
    entropy = torch.rand(5, 40, generator=generator) * 3
    lengths = [40, 1, 17, 0, 33]
    valid = torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]
    for ratio in (0.05, 0.2, 0.5, 1.0):
        per_row = entropy_threshold(entropy, valid, ratio, "response")
        for b, n in enumerate(lengths):
            expected = torch.quantile(entropy[b, :n], 1 - ratio).item() if n else float("inf")
            assert per_row[b].item() == expected
        whole = entropy_threshold(entropy, valid, ratio, "batch")
        assert torch.equal(whole, torch.full((5,), torch.quantile(entropy[valid], 1 - ratio).item()))


# ---------------------------------------------------------------------------------------------------------------------
# A direct, string-based reading of §2, for comparison on random token sequences.


def _strip_edge_punctuation(word: str) -> str:
    def is_word_char(ch: str) -> bool:
        return ch.isalnum() or ch == "\ufffd"

    chars = list(word)
    while chars and not is_word_char(chars[0]):
        chars.pop(0)
    while chars and not is_word_char(chars[-1]):
        chars.pop()
    return "".join(chars)


def _reference_boundaries(
    texts: list[str | None], entropy: list[float], threshold: float, cfg: SegmentationConfig
) -> tuple[list[int], list[bool]]:
    n = len(texts)
    if n == 0:
        return [0, 0], []
    # Special tokens become "\x00": no white space, no punctuation of interest, and a word separator below.
    pieces = ["\x00" if t is None else t for t in texts]
    offsets = [0]
    for piece in pieces:
        offsets.append(offsets[-1] + len(piece))
    text = "".join(pieces)
    markers = {m.lower() for m in cfg.markers}

    def sentence_start(t: int) -> bool:
        before = text[: offsets[t]]
        if t == 0 or before[-1:] in ("\n", "\r"):
            return True
        in_math = len(re.findall(r"(?<!\\)\$+", before)) % 2 == 1
        return before[-1:] in (".", "!", "?", ":") and pieces[t][:1].isspace() and not in_math

    starts = [t for t in range(n) if sentence_start(t)]
    words = list(re.finditer(r"[^\s\x00]+", text))
    word_begins = [w.start() for w in words]

    def marker_word_start(t: int) -> int | None:
        if texts[t] is None or not texts[t].strip():
            return None
        first_char = offsets[t] + len(pieces[t]) - len(pieces[t].lstrip())
        word = words[bisect.bisect_right(word_begins, first_char) - 1]
        if _strip_edge_punctuation(word.group()).lower() not in markers:
            return None
        return bisect.bisect_right(offsets, word.start()) - 1

    best: dict[int, list[float]] = {}  # position -> [best via the sentence rule, best via the marker rule]
    for t in range(n):
        if entropy[t] < threshold:
            continue
        sentence = max(s for s in starts if s <= t)
        if t - sentence <= cfg.align_window:
            position, rule = sentence, 0
        else:
            position, rule = marker_word_start(t), 1
            if position is None:
                continue
        if cfg.min_step_tokens <= position <= n - cfg.min_step_tokens:
            scores = best.setdefault(position, [float("-inf"), float("-inf")])
            scores[rule] = max(scores[rule], entropy[t])
    kept: list[int] = []
    for position in sorted(best, key=lambda p: (-max(best[p]), p)):
        if len(kept) == cfg.max_steps - 1:
            break
        if all(abs(position - k) >= cfg.min_step_tokens for k in kept):
            kept.append(position)
    kept.sort()
    return [0, *kept, n], [best[p][1] > best[p][0] for p in kept]


_SAMPLE_TEXT = (
    "So, we have 3.5 apples. Therefore $x = 2.5$. Alternatively: wait!\n\nStep 2: Let $$ a. b $$ ok.  Next \\$5 "
    "“Wait,” he said — thus x ≤ 3. Hence (so) NOW we note: since 2 + 2 = 4, but also 🦜 ALTERNATIVELY recall\n"
    "$a$$b$ $$"
)


@pytest.fixture(scope="module")
def alphabet(tokenizer) -> list[int]:
    """Qwen2.5 token ids with every feature segmentation looks at (markers, punctuation, white space, newlines,
    digits, $ and $$, an escaped dollar, partial UTF-8 characters, the end-of-turn special token)."""
    ids = sorted(set(tokenizer.encode(_SAMPLE_TEXT)) | {tokenizer.eos_token_id})
    # A backslash at a token's end could escape a dollar in the next token, which the tables do not model.
    return [i for i in ids if not tokenizer.decode([i]).endswith("\\")]


def _reference_texts(tokenizer, ids: Sequence[int]) -> list[str | None]:
    special = set(tokenizer.all_special_ids)
    return [None if i in special else tokenizer.decode([i]) for i in ids]


@st.composite
def _batches(draw, alphabet: list[int]):
    batch = draw(st.integers(1, 4))
    lengths = [draw(st.integers(0, 48)) for _ in range(batch)]
    width = max(lengths) + draw(st.integers(0, 4))
    if width == 0:
        width = 1
    ids = torch.full((batch, width), 151643, dtype=torch.long)
    entropy = torch.full((batch, width), float("nan"))
    # Entropies from a small set so that ties happen; peaks at random places.
    levels = st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0, 1.5, 2.0, 3.0])
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.tensor(draw(st.lists(st.sampled_from(alphabet), min_size=n, max_size=n)), dtype=torch.long)
        entropy[b, :n] = torch.tensor(draw(st.lists(levels, min_size=n, max_size=n)))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    cfg = SegmentationConfig(
        entropy_top_ratio=draw(st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0])),
        quantile_scope=draw(st.sampled_from(["response", "batch"])),
        align_window=draw(st.integers(0, 5)),
        min_step_tokens=draw(st.integers(1, 8)),
        max_steps=draw(st.integers(1, 6)),
    )
    return ids, entropy, mask, lengths, cfg


_PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@given(data=st.data())
@_PROPERTY_SETTINGS
def test_matches_a_direct_reading_of_the_spec_on_random_token_sequences(tokenizer, tables, alphabet, data) -> None:
    ids, entropy, mask, lengths, cfg = data.draw(_batches(alphabet))
    result = segment_steps(ids, entropy, mask, tables, cfg)
    valid = mask.bool()
    thresholds = entropy_threshold(entropy, valid, cfg.entropy_top_ratio, cfg.quantile_scope)
    for b, n in enumerate(lengths):
        row_ids = ids[b, :n].tolist()
        expected, expected_marker = _reference_boundaries(
            _reference_texts(tokenizer, row_ids), entropy[b, :n].tolist(), thresholds[b].item(), cfg
        )
        assert _boundaries(result, b) == expected
        assert result.marker_boundary[b, 1 : len(expected) - 1].tolist() == expected_marker


@given(data=st.data())
@_PROPERTY_SETTINGS
def test_boundaries_are_sorted_at_least_min_step_tokens_apart_and_cover_every_token(tables, alphabet, data) -> None:
    ids, entropy, mask, lengths, cfg = data.draw(_batches(alphabet))
    result = segment_steps(ids, entropy, mask, tables, cfg)
    _assert_well_formed(result, lengths, cfg)


@given(data=st.data(), extra=st.integers(1, 6), pad_id=st.sampled_from([0, 151643, -100, 10**9]))
@_PROPERTY_SETTINGS
def test_extra_right_padding_changes_nothing(tables, alphabet, data, extra: int, pad_id: int) -> None:
    ids, entropy, mask, _, cfg = data.draw(_batches(alphabet))
    result = segment_steps(ids, entropy, mask, tables, cfg)
    # Padding may hold any id and any entropy: neither is read.
    padded = segment_steps(
        torch.cat([ids, torch.full((ids.shape[0], extra), pad_id)], dim=1),
        torch.cat([entropy, torch.full((ids.shape[0], extra), float("inf"))], dim=1),
        torch.cat([mask, torch.zeros(ids.shape[0], extra, dtype=mask.dtype)], dim=1),
        tables,
        cfg,
    )
    width = ids.shape[1]
    assert torch.equal(padded.step_index[:, :width], result.step_index)
    assert (padded.step_index[:, width:] == -1).all()
    assert torch.equal(padded.boundaries, result.boundaries)
    assert torch.equal(padded.num_steps, result.num_steps)
    assert torch.equal(padded.marker_boundary, result.marker_boundary)


@given(data=st.data())
@_PROPERTY_SETTINGS
def test_response_scope_gives_each_row_the_same_steps_alone_as_in_a_batch(tables, alphabet, data) -> None:
    ids, entropy, mask, _, cfg = data.draw(_batches(alphabet))
    cfg = dataclasses.replace(cfg, quantile_scope="response")
    together = segment_steps(ids, entropy, mask, tables, cfg)
    for b in range(ids.shape[0]):
        alone = segment_steps(ids[b : b + 1], entropy[b : b + 1], mask[b : b + 1], tables, cfg)
        assert torch.equal(alone.step_index[0], together.step_index[b])
        assert torch.equal(alone.boundaries[0], together.boundaries[b])
        assert torch.equal(alone.marker_boundary[0], together.marker_boundary[b])


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


def _good_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 0], [30, 31, 0, 0]])
    entropy = torch.rand(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]])
    return ids, entropy, mask


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_entropy_on_a_valid_token_names_the_row(tables, bad: float) -> None:
    ids, entropy, mask = _good_batch()
    entropy[1, 2] = bad
    with pytest.raises(ValueError, match=r"entropy is NaN or infinite.*row 1$"):
        segment_steps(ids, entropy, mask, tables, SegmentationConfig())


def test_mask_that_is_not_a_prefix_names_the_row(tables) -> None:
    ids, entropy, mask = _good_batch()
    mask[2] = torch.tensor([1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"not a prefix.*row 2$"):
        segment_steps(ids, entropy, mask, tables, SegmentationConfig())


def test_mask_with_values_other_than_zero_and_one_names_the_row(tables) -> None:
    ids, entropy, mask = _good_batch()
    mask[0, 0] = 2
    with pytest.raises(ValueError, match=r"only 0 and 1.*row 0$"):
        segment_steps(ids, entropy, mask, tables, SegmentationConfig())


@pytest.mark.parametrize("bad_id", [-1, 151665, 10**9])
def test_token_id_outside_the_vocabulary_names_the_rows(tables, bad_id: int) -> None:
    ids, entropy, mask = _good_batch()
    ids[0, 3] = bad_id
    ids[2, 0] = bad_id
    with pytest.raises(ValueError, match=r"outside the vocabulary.*rows 0, 2$"):
        segment_steps(ids, entropy, mask, tables, SegmentationConfig())


def test_mismatched_shapes_are_rejected(tables) -> None:
    ids, entropy, mask = _good_batch()
    with pytest.raises(ValueError, match="shape mismatch"):
        segment_steps(ids, entropy[:, :3], mask, tables, SegmentationConfig())
    with pytest.raises(ValueError, match="shape mismatch"):
        segment_steps(ids, entropy, mask[:2], tables, SegmentationConfig())
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        segment_steps(ids[0], entropy[0], mask[0], tables, SegmentationConfig())


def test_wrong_dtypes_are_rejected(tables) -> None:
    ids, entropy, mask = _good_batch()
    with pytest.raises(ValueError, match="integer token ids"):
        segment_steps(ids.float(), entropy, mask, tables, SegmentationConfig())
    with pytest.raises(ValueError, match="floating-point"):
        segment_steps(ids, ids, mask, tables, SegmentationConfig())


def test_tables_built_for_other_markers_are_rejected(tables) -> None:
    ids, entropy, mask = _good_batch()
    with pytest.raises(ValueError, match="rebuild the tables"):
        segment_steps(ids, entropy, mask, tables, SegmentationConfig(markers=("wait",)))


def test_markers_that_are_not_single_words_are_rejected() -> None:
    with pytest.raises(ValueError, match="single alphanumeric word"):
        VocabTables.from_token_texts(["a", "b"], markers=("so-called",))
    with pytest.raises(ValueError, match="single alphanumeric word"):
        VocabTables.from_token_texts(["a", "b"], markers=("...",))
