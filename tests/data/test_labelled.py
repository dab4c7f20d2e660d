"""Readers of the supervised tasks (rnnkit.data.labelled) and their example batches
(rnnkit.data.stream.ExampleBatches)."""

import json

import pytest
import torch

from rnnkit.data.labelled import (LabelledLine, read_labelled, read_parallel, read_tagged,
                                  tagged_format, write_tagged)
from rnnkit.data.stream import ExampleBatches


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as e:
        call(*args, **kwargs)
    return str(e.value)


# ---------------------------------------------------------------- label<TAB>text

def test_read_labelled_skips_header_and_numbers_lines_from_one(tmp_path):
    f = write(tmp_path / "a.tsv", "Label\ttext\npos\tgood  film\nneg\tbad\tand tabbed\n")
    assert read_labelled(f) == [LabelledLine("pos", "good  film", 2),
                                LabelledLine("neg", "bad\tand tabbed", 3)]
    g = write(tmp_path / "b.tsv", "pos\tfine\n")                 # no header: line 1 is data
    assert read_labelled(g) == [LabelledLine("pos", "fine", 1)]


def test_read_labelled_vectors_and_text_alone(tmp_path):
    f = write(tmp_path / "v.tsv", "0.5,-1,2e1\tx y\n1,2,3\tz\n")
    assert [(e.label, e.text) for e in read_labelled(f, vector=True)] == [
        ((0.5, -1.0, 20.0), "x y"), ((1.0, 2.0, 3.0), "z")]
    g = write(tmp_path / "t.txt", "just text\npos\tlabelled\n")
    assert [(e.label, e.text, e.line) for e in read_labelled(g, require_label=False)] == [
        ("", "just text", 1), ("pos", "labelled", 2)]


@pytest.mark.parametrize("text, line, what", [
    ("pos\tok\nno tab here\n", 2, "no tab"),
    ("pos\tok\nneg\tok\n\t text\n", 3, "empty label"),
    ("pos\tok\nneg\t  \n", 2, "empty text"),
    ("pos\tok\n\npos\tok\n", 2, "empty line"),
    ("label\ttext\npos\tok\n  \n", 3, "empty line"),           # the header counts as line 1
])
def test_read_labelled_errors_name_file_and_line(tmp_path, text, line, what):
    f = write(tmp_path / "bad.tsv", text)
    message = error_of(read_labelled, f)
    assert message.startswith(f"{f}, line {line}: ") and what in message
    assert "label<TAB>text" in message                         # says what was expected


@pytest.mark.parametrize("text, line, what", [
    ("1,2\ta\n1,x\tb\n", 2, "not a comma-separated list of numbers"),
    ("1,2\ta\n1,2,3\tb\n", 2, "a vector of 3 numbers, expected 2"),
    ("1,2\ta\n3,4\tb\nnan,1\tc\n", 3, "non-finite"),
])
def test_read_labelled_vector_errors_name_file_and_line(tmp_path, text, line, what):
    f = write(tmp_path / "vec.tsv", text)
    message = error_of(read_labelled, f, vector=True)
    assert message.startswith(f"{f}, line {line}: ") and what in message


def test_read_labelled_header_alone_is_no_examples(tmp_path):
    f = write(tmp_path / "h.tsv", "label\ttext\n")
    assert error_of(read_labelled, f) == f"{f}: no examples (only a header?)"


# ---------------------------------------------------------------- tagged sentences

def conllu_line(i, form, upos="_", xpos="_", head="_"):
    return "\t".join([str(i), form, form.lower(), upos, xpos, "_", head, "_", "_", "_"])


CONLLU = "\n".join([
    "# sent_id = 1",
    "# text = Vámonos al mar.",
    "1-2\tVámonos\t_\t_\t_\t_\t_\t_\t_\t_",
    conllu_line(1, "Vamos", "VERB", "V", "0"),
    conllu_line(2, "nos", "PRON", "P", "1"),
    "3-4\tal\t_\t_\t_\t_\t_\t_\t_\t_",
    conllu_line(3, "a", "ADP", "S", "5"),
    conllu_line(4, "el", "DET", "D", "5"),
    conllu_line(5, "mar", "NOUN", "N", "1"),
    "5.1\tvan\tir\tVERB\tV\t_\t_\t_\t0:root\t_",
    conllu_line(6, ".", "PUNCT", "F", "1"),
    "",
    "# sent_id = 2",
    conllu_line(1, "Sí", "INTJ", "I", "0"),
    "",
]) + "\n"


def test_conllu_reads_words_and_skips_ranges_and_empty_nodes(tmp_path):
    f = write(tmp_path / "x.conllu", CONLLU)
    sentences, fmt = read_tagged(f)
    assert fmt == "conllu" and len(sentences) == 2
    first, second = sentences
    assert first.words == ["Vamos", "nos", "a", "el", "mar", "."]
    assert first.tags == ["VERB", "PRON", "ADP", "DET", "NOUN", "PUNCT"]
    assert first.word_lines == [3, 4, 6, 7, 8, 10] and len(first.lines) == 11
    assert first.line == 1 and second.line == 13
    assert (second.words, second.tags, second.word_lines) == (["Sí"], ["INTJ"], [1])
    xpos, _ = read_tagged(f, column="xpos")
    assert xpos[0].tags == ["V", "P", "S", "D", "N", "F"]


def test_untagged_input_reads_with_require_tags_false(tmp_path):
    f = write(tmp_path / "u.conllu", conllu_line(1, "a") + "\n" + conllu_line(2, "b") + "\n\n")
    sentences, _ = read_tagged(f, require_tags=False)
    assert sentences[0].words == ["a", "b"] and sentences[0].tags == [None, None]
    g = write(tmp_path / "u.txt", "a\nb\n\nc\n")
    sentences, fmt = read_tagged(g, require_tags=False)
    assert fmt == "columns"
    assert [(s.words, s.tags, s.line) for s in sentences] == [
        (["a", "b"], [None, None], 1), (["c"], [None], 4)]


def test_tagged_format_by_name_or_first_data_line(tmp_path):
    assert tagged_format(write(tmp_path / "a.conllu", "w\tt\n")) == "conllu"       # by name
    assert tagged_format(write(tmp_path / "b.txt", "# c\n" + CONLLU)) == "conllu"
    assert tagged_format(write(tmp_path / "c.txt", "w\tt\n")) == "columns"


@pytest.mark.parametrize("lines, line, what", [
    ([conllu_line(1, "a", "X"), "2\tb\tb\tX"], 2, "4 tab-separated columns, CoNLL-U has 10"),
    (["# c", conllu_line(1, "a", "X"), conllu_line("x", "b", "X")], 3,
     "ID 'x' is not an integer"),
    ([conllu_line(1, "a", "X"), "", conllu_line("2-b", "c", "X")], 3,
     "ID '2-b' is not an integer, a range"),
    ([conllu_line(1, "a", "X"), conllu_line(2, "b", "")], 2, "empty upos column"),
    ([conllu_line(1, "a", "X"), conllu_line(2, " ", "X")], 2, "empty word"),
    ([conllu_line(1, "a", "X"), "", "# only a comment", ""], 3, "a sentence without word lines"),
])
def test_malformed_conllu_names_file_and_line(tmp_path, lines, line, what):
    f = write(tmp_path / "bad.conllu", "\n".join(lines) + "\n")
    message = error_of(read_tagged, f)
    assert message.startswith(f"{f}, line {line}: ") and what in message


@pytest.mark.parametrize("column", ["upos", "xpos"])
def test_conllu_underscore_is_a_missing_tag_when_tags_are_required(tmp_path, column):
    f = write(tmp_path / "untagged.conllu",
              conllu_line(1, "a", "DET", "DT") + "\n" + conllu_line(2, "b") + "\n\n")
    message = error_of(read_tagged, f, column=column)
    assert message.startswith(f"{f}, line 2: ") and column in message


@pytest.mark.parametrize("text, line, what", [
    ("a\tX\nb\tY\n\nc\n", 4, "no tag; expected 'word<TAB>tag'"),
    ("a\tX\n\n\nb\tY\tZ\n", 4, "3 tab-separated columns"),
    ("a\tX\n\tY\n", 2, "empty word"),
])
def test_malformed_columns_name_file_and_line(tmp_path, text, line, what):
    f = write(tmp_path / "bad.txt", text)
    message = error_of(read_tagged, f)
    assert message.startswith(f"{f}, line {line}: ") and what in message


def test_read_tagged_rejects_unknown_column_and_empty_file(tmp_path):
    f = write(tmp_path / "a.txt", "a\tX\n")
    assert "column" in error_of(read_tagged, f, column="lemma")
    blank = write(tmp_path / "blank.txt", "\n\n")
    assert error_of(read_tagged, blank) == f"{blank}: no sentences"


@pytest.mark.parametrize("name, text", [
    ("gold.conllu", CONLLU),
    ("gold.txt", "The\tDET\ncat\tNOUN\n\nSí\tINTJ\n.\tPUNCT\n\n"),
])
def test_write_tagged_of_gold_tags_reproduces_the_file(tmp_path, name, text):
    f = write(tmp_path / name, text)
    for column in ("upos", "xpos"):
        sentences, fmt = read_tagged(f, column=column)
        out = tmp_path / f"again-{column}-{name}"
        write_tagged(out, sentences, [s.tags for s in sentences], fmt, column=column)
        assert out.read_bytes() == f.read_bytes()


def test_write_tagged_changes_only_the_chosen_column(tmp_path):
    f = write(tmp_path / "x.conllu", CONLLU)
    sentences, fmt = read_tagged(f, column="xpos")
    predicted = [[f"P{k}" for k in range(len(s.words))] for s in sentences]
    out = tmp_path / "out.conllu"
    write_tagged(out, sentences, predicted, fmt, column="xpos")
    before, after = CONLLU.split("\n"), out.read_text(encoding="utf-8").split("\n")
    assert len(before) == len(after)
    changed = [(b.split("\t"), a.split("\t")) for b, a in zip(before, after) if a != b]
    assert len(changed) == 7                                     # the 7 word lines
    for b, a in changed:
        assert a[:4] == b[:4] and a[5:] == b[5:] and a[4].startswith("P")
    columns = write(tmp_path / "w.txt", "a\nb\n\nc\tOLD\n")
    sentences, fmt = read_tagged(columns, require_tags=False)
    write_tagged(tmp_path / "w.out", sentences, [["X", "Y"], ["Z"]], fmt)
    assert (tmp_path / "w.out").read_text() == "a\tX\nb\tY\n\nc\tZ\n\n"


# ---------------------------------------------------------------- sentence pairs

def test_read_parallel_two_files_and_tsv(tmp_path):
    src = write(tmp_path / "s.txt", " a b \nc\n")
    tgt = write(tmp_path / "t.txt", "x\ny z\n")
    assert [(p.source, p.target, p.line) for p in read_parallel(src, tgt)] == [
        ("a b", "x", 1), ("c", "y z", 2)]
    tsv = write(tmp_path / "p.tsv", "a b\tx\nc\ty\tz\n")
    assert [(p.source, p.target) for p in read_parallel(tsv)] == [("a b", "x"), ("c", "y\tz")]
    alone = write(tmp_path / "alone.txt", "a b\nc\n")
    assert [(p.source, p.target) for p in read_parallel(alone, require_target=False)] == [
        ("a b", ""), ("c", "")]


def test_mismatched_parallel_files_name_both_counts(tmp_path):
    src = write(tmp_path / "src.txt", "a\nb\nc\n")
    tgt = write(tmp_path / "tgt.txt", "x\ny\n")
    message = error_of(read_parallel, src, tgt)
    assert message.startswith(f"{src} has 3 lines but {tgt} has 2")


@pytest.mark.parametrize("side", ["source", "target"])
def test_empty_line_in_a_parallel_file_names_that_file_and_line(tmp_path, side):
    src = write(tmp_path / "src.txt", "a\nb\n \nd\n" if side == "source" else "a\nb\nc\nd\n")
    tgt = write(tmp_path / "tgt.txt", "w\nx\ny\nz\n" if side == "source" else "w\nx\ny\n\n")
    bad, line = (src, 3) if side == "source" else (tgt, 4)
    assert error_of(read_parallel, src, tgt) == f"{bad}, line {line}: empty line; expected a " \
                                                "sentence"


@pytest.mark.parametrize("text, line, what", [
    ("a\tx\nb\n", 2, "no tab"),
    ("a\tx\n\nc\ty\n", 2, "empty line"),
    ("a\tx\nb\ty\n \tz\n", 3, "empty source sentence"),
    ("a\tx\nb\t \n", 2, "empty target sentence"),
])
def test_parallel_tsv_errors_name_file_and_line(tmp_path, text, line, what):
    f = write(tmp_path / "p.tsv", text)
    message = error_of(read_parallel, f)
    assert message.startswith(f"{f}, line {line}: ") and what in message


# ---------------------------------------------------------------- example batches

def drain(batches) -> list[list[int]]:
    out = []
    while (batch := batches.next_batch()) is not None:
        out.append(batch)
    return out


@pytest.mark.parametrize("with_lengths", [False, True])
def test_every_epoch_is_a_permutation_of_all_examples(with_lengths):
    n, size = 103, 8
    lengths = torch.randint(1, 40, (n,)).tolist() if with_lengths else None
    batches = ExampleBatches(n, size, lengths=lengths, seed=3, pool=4)
    epochs = []
    for _ in range(3):
        epoch = drain(batches)
        assert len(epoch) == len(batches) == 13
        assert sorted(i for b in epoch for i in b) == list(range(n))
        assert sorted(len(b) for b in epoch)[1:] == [size] * 12     # one short batch at most
        epochs.append(epoch)
        batches.reset_epoch()
    assert epochs[0] != epochs[1] != epochs[2]                      # a new order each epoch


def test_no_shuffle_keeps_file_order_even_with_lengths():
    batches = ExampleBatches(7, 3, lengths=[5, 1, 4, 2, 3, 9, 1], shuffle=False)
    assert drain(batches) == [[0, 1, 2], [3, 4, 5], [6]]


def spread(epoch, lengths) -> float:
    return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch) / len(epoch)


def test_bucketing_batches_examples_of_similar_length():
    n, size = 400, 8
    lengths = torch.randint(1, 101, (n,)).tolist()
    plain = spread(drain(ExampleBatches(n, size, seed=1)), lengths)
    assert plain > 70                               # random batches: (7/9) * 99 expected
    # sorted pools of 400 (40) examples: 8 neighbours spread over ~7/400 (7/40) of the range
    for pool, limit in [(50, 2.5), (5, 22)]:
        bucketed = spread(drain(ExampleBatches(n, size, lengths=lengths, seed=1, pool=pool)),
                          lengths)
        assert bucketed <= limit


def test_bucketed_batches_do_not_come_in_length_order():
    n, size = 400, 8
    lengths = list(range(n))                        # all distinct: the order is visible
    epoch = drain(ExampleBatches(n, size, lengths=lengths, seed=1, pool=50))
    firsts = [lengths[b[0]] for b in epoch]
    assert firsts != sorted(firsts)                 # the batches themselves are shuffled


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("epochs_before, taken", [(0, 0), (0, 5), (2, 9), (1, 13)])
def test_resume_from_state_dict_gives_identical_batches(with_lengths, epochs_before, taken):
    n = 90
    lengths = torch.randint(1, 30, (n,)).tolist() if with_lengths else None
    a = ExampleBatches(n, 7, lengths=lengths, seed=5, pool=3)
    for _ in range(epochs_before):
        drain(a)
        a.reset_epoch()
    for _ in range(taken):
        assert a.next_batch() is not None                         # 13 batches an epoch
    state = json.loads(json.dumps(a.state_dict()))                  # JSON-serialisable
    b = ExampleBatches(n, 7, lengths=lengths, seed=99, pool=3)      # other seed: state wins
    b.load_state_dict(state)
    assert b.epoch == a.epoch
    assert drain(b) == drain(a)
    a.reset_epoch()
    b.reset_epoch()
    assert drain(b) == drain(a)


def test_load_state_dict_refuses_other_settings():
    state = ExampleBatches(10, 2).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        ExampleBatches(10, 3).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples"):
        ExampleBatches(11, 2).load_state_dict(state)


def test_collate_receives_the_indices():
    batches = ExampleBatches(5, 2, shuffle=False, collate=lambda ix: [10 * i for i in ix])
    assert drain(batches) == [[0, 10], [20, 30], [40]]
