"""The tagger: padding, the character encoder over distinct words, word dropout
(rnnkit.models.tagger; batches from rnnkit.tasks.tagger.collate)."""

import pytest
import torch

from rnnkit.data.tokenizers import build_char_tokenizer
from rnnkit.models.encoder import UNK_ID
from rnnkit.models.tagger import CharEncoder, Tagger, TaggerConfig
from rnnkit.tasks.tagger import IGNORE, collate

SENTENCES = [["the", "cat", "sat", "on", "the", "mat"], ["a", "cat"],
             ["the", "dog", "ran"], ["Mat"]]
WORDS = sorted({w for s in SENTENCES for w in s})
V = len(WORDS) + 3                                          # <pad> <unk> <eos> + words
HC = 3


def word_ids(sentence):
    return [3 + WORDS.index(w) for w in sentence]


@pytest.fixture
def char_tok():
    return build_char_tokenizer(WORDS)


def tagger(chars: bool, cell="lstm", **options) -> Tagger:
    config = TaggerConfig(vocab_size=V, num_tags=5, char_vocab_size=20 if chars else 0,
                          cell=cell, embedding_size=4, hidden_size=5, num_layers=2,
                          char_embedding_size=3, char_hidden_size=HC if chars else 0,
                          **{"dropout": 0.0, "word_dropout": 0.0, **options})
    return Tagger(config).double().eval()


def batch(sentences, char_tok, tags=None):
    return collate([word_ids(s) for s in sentences], tags, sentences, char_tok)


def scores_of(model, batch_):
    words, lengths, _, chars, char_lengths, index = batch_
    return model(words, lengths, chars, char_lengths, index)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("chars", [False, True])
def test_padding_never_changes_tag_scores(char_tok, cell, chars):
    model = tagger(chars, cell)
    tok = char_tok if chars else None
    with torch.no_grad():
        words, lengths, _, c, cl, index = batch(SENTENCES, tok)
        scores = model(words, lengths, c, cl, index)
        padding = torch.arange(words.shape[0])[:, None] >= lengths[None]
        other = words.masked_fill(padding, 5)                      # arbitrary padding ids
        torch.testing.assert_close(model(other, lengths, c, cl, index), scores, rtol=0,
                                   atol=1e-12)
        for b, sentence in enumerate(SENTENCES):
            alone = scores_of(model, batch([sentence], tok))
            torch.testing.assert_close(scores[:len(sentence), b], alone[:, 0])


def test_collate_encodes_each_distinct_word_once(char_tok):
    words, lengths, tags, chars, char_lengths, index = batch(
        SENTENCES, char_tok, tags=[list(range(len(s))) for s in SENTENCES])
    forms = list(dict.fromkeys(w for s in SENTENCES for w in s))    # first-seen order
    assert chars.shape[1] == len(forms) == 9
    decoded = [char_tok.decode(chars[:n, k].tolist()) for k, n in enumerate(char_lengths)]
    assert decoded == forms
    assert char_lengths.tolist() == [len(f) for f in forms]
    for b, sentence in enumerate(SENTENCES):
        assert [forms[i] for i in index[:len(sentence), b].tolist()] == sentence
        assert words[:len(sentence), b].tolist() == word_ids(sentence)
        assert tags[:len(sentence), b].tolist() == list(range(len(sentence)))
        assert (tags[len(sentence):, b] == IGNORE).all() and (words[len(sentence):, b] == 0).all()
    assert lengths.tolist() == [6, 2, 3, 1]


def test_unknown_characters_become_unk(char_tok):
    *_, chars, char_lengths, _ = collate([[1, 4]], None, [["dog", "zéro"]], char_tok)
    assert chars[:, 1].tolist() == [UNK_ID, UNK_ID] + char_tok.encode("ro")
    assert char_lengths.tolist() == [3, 4]


def test_char_encoder_is_torch_forward_last_and_backward_first():
    encoder = CharEncoder(12, 3, HC, "lstm").double()
    twin = torch.nn.LSTM(3, HC, bidirectional=True).double()
    twin.load_state_dict(encoder.rnn.state_dict(), strict=True)
    lengths = torch.tensor([4, 1, 3])
    chars = torch.randint(1, 12, (4, 3)).masked_fill(torch.arange(4)[:, None] >= lengths, 0)
    with torch.no_grad():
        got = encoder(chars, lengths)
        for k, n in enumerate(lengths.tolist()):
            out, _ = twin(encoder.embedding(chars[:n, k:k + 1]))
            torch.testing.assert_close(got[k], torch.cat([out[n - 1, 0, :HC], out[0, 0, HC:]]))


def test_char_features_reach_each_position_as_its_word_alone(char_tok):
    model = tagger(True)
    words, lengths, _, chars, char_lengths, index = batch(SENTENCES, char_tok)
    with torch.no_grad():
        scores = model(words, lengths, chars, char_lengths, index)
        extra = torch.zeros(*words.shape, 2 * HC, dtype=torch.float64)
        for b, sentence in enumerate(SENTENCES):
            for t, form in enumerate(sentence):
                ids = torch.tensor(char_tok.encode(form, unknown_policy="unk"))[:, None]
                extra[t, b] = model.chars(ids, torch.tensor([len(form)]))[0]
        outputs, _ = model.encoder(words, lengths, extra)
        expected = model.output(outputs)
    for b, sentence in enumerate(SENTENCES):
        torch.testing.assert_close(scores[:len(sentence), b], expected[:len(sentence), b])


def test_word_dropout_changes_nothing_in_eval_mode():
    plain = tagger(False)
    dropping = tagger(False, word_dropout=0.5)
    dropping.load_state_dict(plain.state_dict())
    words, lengths, *_ = batch(SENTENCES, None)
    with torch.no_grad():
        assert torch.equal(dropping(words, lengths), plain(words, lengths))


def test_word_dropout_in_training_replaces_words_by_unk():
    model = tagger(False, word_dropout=0.5)
    words, lengths, *_ = batch(SENTENCES, None)
    words[0, 0] = UNK_ID
    torch.manual_seed(7)
    with torch.no_grad():
        trained = model.train()(words, lengths)
    torch.manual_seed(7)
    drop = torch.rand(words.shape) < 0.5
    dropped = words.masked_fill(drop & (words > UNK_ID), UNK_ID)
    assert 0 < int((dropped != words).sum()) < int((words > UNK_ID).sum())
    assert (dropped[words == 0] == 0).all()                    # padding is never dropped
    with torch.no_grad():
        torch.testing.assert_close(trained, model.eval()(dropped, lengths), rtol=0, atol=1e-12)


def test_char_tagger_needs_chars_and_a_char_vocabulary():
    model = tagger(True)
    words, lengths, *_ = batch(SENTENCES, None)
    with pytest.raises(ValueError, match="chars"):
        model(words, lengths)
    with pytest.raises(ValueError, match="char_vocab_size"):
        TaggerConfig(vocab_size=V, num_tags=3, char_vocab_size=0, char_hidden_size=4)
