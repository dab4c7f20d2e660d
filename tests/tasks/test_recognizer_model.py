"""The CTC recogniser's model and features: time subsampling by hand, padding never changes
an utterance's outputs, any registered cell, config checks, SpecAugment masks, log-mel
filterbanks (rnnkit.models.recognizer, rnnkit.data.audio)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit.data import audio
from rnnkit.models.recognizer import (Recognizer, RecognizerConfig, join_steps,
                                      output_lengths)
from conftest import VARIANT_IDS


def _config(**kw):
    return RecognizerConfig(**{"input_size": 5, "num_units": 7, "hidden_size": 6,
                               "num_layers": 3, "frame_stack": 2, "pyramid": 1,
                               "dropout": 0.0, **kw})


def test_join_steps_by_hand():
    x = torch.arange(2 * 3 * 1 * 2, dtype=torch.float).view(6, 1, 2)[:5]   # (5, 1, 2)
    joined = join_steps(x, 2)                                               # (3, 1, 4)
    assert joined.shape == (3, 1, 4)
    assert joined[0, 0].tolist() == [0, 1, 2, 3]
    assert joined[1, 0].tolist() == [4, 5, 6, 7]
    assert joined[2, 0].tolist() == [8, 9, 0, 0]                  # the last group filled


@pytest.mark.parametrize(("stack", "pyramid", "frames", "steps"),
                         [(1, 0, 7, 7), (2, 0, 7, 4), (2, 1, 7, 2), (3, 2, 13, 2),
                          (2, 1, 8, 2), (2, 1, 9, 3)])
def test_output_lengths(stack, pyramid, frames, steps):
    cfg = _config(frame_stack=stack, pyramid=pyramid)
    assert int(output_lengths(torch.tensor([frames]), cfg)) == steps
    model = Recognizer(cfg).eval()
    log_probs, lengths = model(torch.randn(frames, 1, 5), torch.tensor([frames]))
    assert log_probs.shape == (steps, 1, 7) and lengths.tolist() == [steps]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(steps, 1))


@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn"])
def test_padding_never_changes_an_utterances_outputs(cell):
    model = Recognizer(_config(cell=cell)).eval()
    lengths = torch.tensor([11, 7, 3, 1])
    x = torch.randn(11, 4, 5)
    for b, n in enumerate(lengths):
        x[n:, b] = 0.0                                            # padding is zero frames
    log_probs, steps = model(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone, s = model(x[:n, b:b + 1], torch.tensor([n]))
        assert int(s) == int(steps[b])
        torch.testing.assert_close(alone[:, 0], log_probs[:int(s), b], rtol=1e-5, atol=1e-6)


def test_layers_split_into_blocks_around_the_pyramidal_steps():
    model = Recognizer(_config(num_layers=5, pyramid=2, bidirectional=False))
    assert [block.num_layers for block in model.blocks] == [2, 2, 1]
    assert model.blocks[0].input_size == 2 * 5                     # 2 frames stacked
    assert model.blocks[1].input_size == model.blocks[2].input_size == 2 * 6
    assert "blocks.0.weight_hh_l1" in dict(model.named_parameters())


def test_every_registered_cell_trains_a_step():
    for cell in VARIANT_IDS:
        model = Recognizer(_config(cell=cell, num_layers=2))
        log_probs, steps = model(torch.randn(9, 2, 5), torch.tensor([9, 6]))
        loss = torch.nn.functional.ctc_loss(log_probs, torch.tensor([3, 4, 5]), steps,
                                            torch.tensor([2, 1]))
        loss.backward()
        assert all(p.grad is not None for p in model.parameters()), cell


def test_config_checks():
    with pytest.raises(ValueError, match="pyramid: expected fewer pyramidal steps"):
        _config(num_layers=2, pyramid=2)
    with pytest.raises(ValueError, match="frame_stack"):
        _config(frame_stack=0)
    with pytest.raises(ValueError, match="cell"):
        _config(cell="nonesuch")


def test_spec_augment_masks_within_each_length_and_repeats_with_the_seed():
    x = torch.ones(20, 3, 8)
    lengths = torch.tensor([20, 10, 5])
    torch.manual_seed(3)
    a = audio.spec_augment(x, lengths, freq_masks=2, freq_width=3, time_masks=2,
                           time_width=4)
    torch.manual_seed(3)
    b = audio.spec_augment(x, lengths, freq_masks=2, freq_width=3, time_masks=2,
                           time_width=4)
    assert torch.equal(a, b) and torch.equal(x, torch.ones(20, 3, 8))   # input untouched
    assert (a == 0).any()
    assert torch.equal(a[10:, 1], x[10:, 1]) and torch.equal(a[5:, 2], x[5:, 2])
    none = audio.spec_augment(x, lengths, freq_masks=0, freq_width=3, time_masks=0,
                              time_width=4)
    assert torch.equal(none, x)


def test_log_mel_of_a_tone_peaks_at_its_frequency_and_is_normalised():
    pytest.importorskip("kaldi_native_fbank")
    rate = 8000
    t = np.arange(rate // 2) / rate
    rising = 0.1 + t                                   # a rising amplitude: frames differ
    low = audio.log_mel(rising * np.sin(2 * np.pi * 300 * t), rate, 20)
    high = audio.log_mel(rising * np.sin(2 * np.pi * 2500 * t), rate, 20)
    assert low.shape == (48, 20)                       # (0.5 s - 25 ms) / 10 ms + 1
    assert low.mean(0).argmax() < high.mean(0).argmax()
    n = audio.normalize(low)
    assert np.allclose(n.mean(0), 0, atol=1e-4)
    varies = low.std(0) >= 1e-3
    assert varies.any() and np.allclose(n.std(0)[varies], 1, atol=1e-4)
    assert np.allclose(n[:, ~varies], 0, atol=1e-4)               # constant: only centred


@pytest.mark.parametrize("text", ["café", "naïve café"])
def test_bpe_beam_search_writes_what_greedy_writes_beyond_ascii(text):
    pytest.importorskip("pyctcdecode")
    from rnnkit.data.tokenizers import build_bpe_tokenizer
    from rnnkit.tasks import recognizer

    units = build_bpe_tokenizer(["café au lait", "naïve café", "ab cd"] * 5, vocab_size=262)
    ids = units.encode(text)
    log_probs = torch.full((len(ids), units.vocab_size), -12.0)
    log_probs[torch.arange(len(ids)), ids] = -0.01                 # the text, unmistakably
    assert recognizer.units_text(recognizer.ctc_greedy(ids), units) == text
    assert recognizer.BeamDecoder(units, beam=4)(log_probs) == text
