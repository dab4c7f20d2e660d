"""The command line of the supervised tasks and the conditioned language model: train, then
eval / predict / translate / generate end to end, JSON outputs, and bad input as one clear
line with exit 2."""

from __future__ import annotations

import json
import random

import pytest

from rnnkit.cli import main
from conftest import expect_cli_error, run_cli

TASKS = ["classifier", "tagger", "translator", "conditioned-lm"]
WORDS = {"pos": "good great fine nice".split(), "neg": "bad awful poor sad".split()}
# a tiny UD-like treebank: word -> tag, all unambiguous
LEXICON = {"the": "DET", "a": "DET", "cat": "NOUN", "dog": "NOUN", "mat": "NOUN",
           "sat": "VERB", "ran": "VERB", "on": "ADP", "in": "ADP"}
SRC_WORDS, TGT_WORDS = "a b c d e".split(), "A B C D E".split()
TINY = ["--epochs", "1", "--no-progress", "--hidden", "8", "--embedding-size", "8"]


_run, _expect_error = run_cli, expect_cli_error


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _labelled_lines(rng, n):
    labels = sorted(WORDS)
    out = []
    for _ in range(n):
        label = rng.choice(labels)
        out.append(f"{label}\t" + " ".join(rng.choice(WORDS[label]) for _ in range(3)))
    return out


def _conllu(rng, n):
    lines = []
    for k in range(n):
        words = rng.choice([["the", "cat", "sat", "on", "a", "mat"], ["a", "dog", "ran"],
                            ["the", "dog", "sat", "in", "the", "mat"]])
        lines.append(f"# sent_id = {k + 1}")
        for i, w in enumerate(words, start=1):
            lines.append("\t".join([str(i), w, w, LEXICON[w], "_", "_", "0", "dep", "_", "_"]))
        lines.append("")
    return lines


def _pairs(rng, n):
    out = []
    for _ in range(n):
        idx = [rng.randrange(5) for _ in range(rng.randint(2, 4))]
        out.append((" ".join(SRC_WORDS[i] for i in idx), " ".join(TGT_WORDS[i] for i in idx)))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One tiny model per task, trained through the command line (one epoch)."""
    root = tmp_path_factory.mktemp("cli-tasks")
    rng = random.Random(0)
    files = {
        "labelled": _write(root / "labelled.tsv", _labelled_lines(rng, 60)),
        "conllu": _write(root / "ud.conllu", _conllu(rng, 30)),
        "conditioned": _write(root / "conditioned.tsv", [
            f"{k % 2}\t{'yes' if k % 2 else 'no'} {rng.choice(WORDS['pos'])}"
            for k in range(40)]),
    }
    for split, n in (("train", 60), ("val", 8)):
        pairs = _pairs(rng, n)
        files[f"{split}.de"] = _write(root / f"{split}.de", [s for s, _ in pairs])
        files[f"{split}.en"] = _write(root / f"{split}.en", [t for _, t in pairs])
    runs = {
        "classifier": ["--data", files["labelled"], "--batch-size", "16"],
        "tagger": ["--data", files["conllu"], "--batch-size", "8", "--layers", "1",
                   "--char-hidden", "4", "--char-embedding-size", "4"],
        "translator": ["--train", f"{files['train.de']},{files['train.en']}",
                       "--valid", f"{files['val.de']},{files['val.en']}", "--level", "word",
                       "--min-count", "1", "--batch-size", "16"],
        "conditioned-lm": ["--data", files["conditioned"], "--batch-size", "8"],
    }
    out = {}
    for task, args in runs.items():
        out[task] = root / task
        assert main(["train", task, "--out", str(out[task]), *map(str, args), *TINY]) == 0
    out["lm"] = root / "lm"
    assert main(["train", "lm", "--data", str(files["train.en"]), "--out", str(out["lm"]),
                 "--level", "word", "--hidden", "8", "--layers", "1", "--batch-size", "4",
                 "--bptt", "4", "--max-steps", "2", "--sample", "0", "--no-progress"]) == 0
    return root, files, out


# ---- help ----------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_every_train_task_has_help(task, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", task, "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    assert text.startswith(f"usage: rnnkit train {task}") and "--config" in text


@pytest.mark.parametrize("command", ["eval", "predict", "translate", "generate"])
def test_every_use_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: rnnkit {command}")


# ---- end to end ----------------------------------------------------------------------------

def test_cli_train_then_eval_and_predict_classifier(models, capsys):
    _, files, out = models
    labelled = files["labelled"]
    code, text, _ = _run(["eval", out["classifier"], "--data", labelled], capsys)
    lines = text.splitlines()
    assert code == 0 and lines[0].startswith(f"{labelled}: ") and "60 examples" in lines[0]
    assert lines[1].startswith("confusion") and lines[2].split() == ["neg", "pos"]
    assert [line.split()[0] for line in lines[3:]] == ["neg", "pos"]
    code, text, _ = _run(["eval", out["classifier"], "--data", labelled, "--json"], capsys)
    figures = json.loads(text)
    assert code == 0 and figures["examples"] == 60 and figures["labels"] == ["neg", "pos"]
    assert sum(map(sum, figures["confusion"])) == 60

    code, text, _ = _run(["predict", out["classifier"], labelled], capsys)
    rows = text.splitlines()
    assert code == 0 and rows[0] == "line\tlabel\tp(neg)\tp(pos)\ttext" and len(rows) == 61
    first = rows[1].split("\t")
    assert first[0] == "1" and first[1] in ("neg", "pos")
    assert float(first[2]) + float(first[3]) == pytest.approx(1, abs=2e-4)
    code, text, _ = _run(["predict", out["classifier"], labelled, "--json"], capsys)
    predictions = json.loads(text)
    assert code == 0 and len(predictions) == 60
    for p in predictions:
        assert sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)


def test_cli_train_then_eval_and_predict_tagger(models, capsys, tmp_path):
    _, files, out = models
    conllu = files["conllu"]
    code, text, _ = _run(["eval", out["tagger"], "--data", conllu], capsys)
    assert code == 0 and text.startswith(f"{conllu}: ") and "30 sentences" in text
    code, text, _ = _run(["eval", out["tagger"], "--data", conllu, "--json"], capsys)
    assert code == 0 and json.loads(text)["sentences"] == 30

    code, text, _ = _run(["predict", out["tagger"], conllu], capsys)
    original = conllu.read_text(encoding="utf-8").splitlines()
    tagged = text.splitlines()
    assert code == 0 and len(tagged) == len(original)
    for before, after in zip(original, tagged):           # only the UPOS column may change
        a, b = before.split("\t"), after.split("\t")
        assert len(a) == len(b) and a[:3] + a[4:] == b[:3] + b[4:]
        if len(b) == 10:
            assert b[3] in set(LEXICON.values())
    written = tmp_path / "tagged.conllu"
    code, text, err = _run(["predict", out["tagger"], conllu, "--out", written], capsys)
    assert code == 0 and text == "" and f"wrote {written}" in err
    assert written.read_text(encoding="utf-8").splitlines() == tagged


def test_cli_train_then_eval_and_translate(models, capsys, tmp_path):
    _, files, out = models
    source, reference = files["val.de"], files["val.en"]
    code, text, _ = _run(["eval", out["translator"], "--data", source, "--reference",
                          reference, "--beam", "2"], capsys)
    lines = [line for line in text.splitlines() if not line.startswith("note: ")]  # the cap
    assert code == 0 and lines[0].startswith(f"{source}: loss ")
    assert "BLEU" in lines[0] and lines[0].endswith("8 sentences, beam 2")
    assert lines[1].startswith("sacrebleu: nrefs:1")
    code, text, _ = _run(["eval", out["translator"], "--data", source, "--reference",
                          reference, "--beam", "1", "--json"], capsys)
    figures = json.loads(text)
    assert code == 0 and figures["sentences"] == 8 and figures["beam"] == 1
    assert 0 <= figures["bleu"] <= 100 and 0 <= figures["chrf"] <= 100

    sources = source.read_text(encoding="utf-8").splitlines()
    code, text, _ = _run(["translate", out["translator"], source, "--beam", "1"], capsys)
    greedy = text.splitlines()
    assert code == 0 and len(greedy) == 8
    code, text, _ = _run(["translate", out["translator"], source, "--beam", "1", "--json"],
                         capsys)
    rows = json.loads(text)
    assert code == 0 and [r["line"] for r in rows] == list(range(1, 9))
    assert [r["source"] for r in rows] == sources and [r["translation"] for r in rows] == greedy
    written, picture = tmp_path / "out.en", tmp_path / "attention.png"
    code, text, err = _run(["translate", out["translator"], source, "--beam", "3", "--out",
                            written, "--attention", picture, "--sentence", "2"], capsys)
    assert code == 0 and text == ""
    assert len(written.read_text(encoding="utf-8").splitlines()) == 8
    assert picture.read_bytes()[:4] == b"\x89PNG"
    assert "attention of line 2 (greedy: '" in err and err.rstrip().endswith(f"): {picture}")


def test_cli_greedy_translation_equals_the_attention_pictures_translation(models, capsys,
                                                                          tmp_path):
    _, files, out = models
    source = files["val.de"]
    lengths = [len(line.split()) for line in source.read_text(encoding="utf-8").splitlines()]
    shortest = lengths.index(min(lengths)) + 1
    assert min(lengths) < max(lengths)
    code, text, _ = _run(["translate", out["translator"], source, "--beam", "1"], capsys)
    greedy = text.splitlines()[shortest - 1]
    code, _, err = _run(["translate", out["translator"], source, "--beam", "1", "--attention",
                         tmp_path / "a.png", "--sentence", shortest], capsys)
    assert code == 0 and f"(greedy: {greedy!r})" in err


def test_cli_train_conditioned_lm_then_generate(models, capsys):
    _, _, out = models
    code, text, _ = _run(["generate", out["conditioned-lm"], "--condition", "1", "--length",
                          "5", "--seed", "3", "--json"], capsys)
    result = json.loads(text)
    assert code == 0 and result["prime"] == ""
    code, streamed, _ = _run(["generate", out["conditioned-lm"], "--condition", "1",
                              "--length", "5", "--seed", "3"], capsys)
    assert code == 0 and streamed == result["text"] + "\n"          # the same text, streamed
    code, text, _ = _run(["generate", out["conditioned-lm"], "--condition", "0", "--length",
                          "5", "--beam", "2", "--json"], capsys)
    assert code == 0 and "\n" not in json.loads(text)["text"]


def test_cli_train_json_summary(models, capsys, tmp_path):
    _, files, _ = models
    code, text, err = _run(["train", "conditioned-lm", "--data", files["conditioned"], "--out",
                            tmp_path / "m", "--max-steps", "2", "--json", *TINY], capsys)
    summary = json.loads(text)
    assert code == 0 and summary["reason"] == "max_steps" and summary["step"] == 2
    assert "loss" in summary["valid"] and "model:" in err           # the log goes to stderr
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"]["hidden_size"] == 8 and config["model"]["condition"] == "label"


def test_cli_config_file_sets_task_options(models, capsys, tmp_path):
    _, files, _ = models
    config = tmp_path / "classifier.toml"
    config.write_text(f'data = "{files["labelled"]}"\nhidden = 6\nembedding_size = 5\n'
                      'pooling = "mean"\nmax_steps = 2\nbatch_size = 16\n', encoding="utf-8")
    out = tmp_path / "m"
    code, _, _ = _run(["train", "classifier", "--config", config, "--out", out,
                       "--embedding-size", "7", "--no-progress"], capsys)
    assert code == 0
    saved = json.loads((out / "config.json").read_text())["model"]
    assert (saved["hidden_size"], saved["embedding_size"], saved["pooling"]) == (6, 7, "mean")


# ---- errors --------------------------------------------------------------------------------

def test_classifier_line_without_tab(tmp_path, capsys):
    bad = _write(tmp_path / "bad.tsv", ["pos\tgood fine", "neg bad awful", "pos\tnice"])
    _expect_error(["train", "classifier", "--data", bad, "--out", tmp_path / "m"], capsys,
                  f"{bad}, line 2", "no tab")


def test_unknown_label_at_eval(models, tmp_path, capsys):
    _, _, out = models
    bad = _write(tmp_path / "test.tsv", ["pos\tgood", "neg\tbad", "maybe\tfine"])
    _expect_error(["eval", out["classifier"], "--data", bad], capsys,
                  f"{bad}, line 3", "unknown label 'maybe'")


@pytest.mark.parametrize("broken, fragment", [
    ("2\tcat\tcat\tNOUN\t_\t_\t0\tdep\t_", "9 tab-separated columns"),
    ("x\tcat\tcat\tNOUN\t_\t_\t0\tdep\t_\t_", "ID 'x' is not an integer"),
])
def test_malformed_conllu(models, tmp_path, capsys, broken, fragment):
    _, _, out = models
    bad = _write(tmp_path / "bad.conllu", ["# sent_id = 1",
                                           "1\tthe\tthe\tDET\t_\t_\t0\tdep\t_\t_", broken, ""])
    _expect_error(["eval", out["tagger"], "--data", bad], capsys, f"{bad}, line 3", fragment)
    _expect_error(["predict", out["tagger"], bad], capsys, f"{bad}, line 3", fragment)


def test_translation_files_of_different_lengths(models, tmp_path, capsys):
    _, files, out = models
    src = _write(tmp_path / "train.de", ["a b", "c d", "e"])
    tgt = _write(tmp_path / "train.en", ["A B", "C D"])
    _expect_error(["train", "translator", "--train", f"{src},{tgt}", "--valid",
                   f"{src},{tgt}", "--out", tmp_path / "m", "--level", "word"], capsys,
                  f"{src} has 3 lines but {tgt} has 2")
    _expect_error(["eval", out["translator"], "--data", src, "--reference", tgt], capsys,
                  f"{src} has 3 lines but {tgt} has 2")


def test_empty_line_in_a_file_to_translate(models, tmp_path, capsys):
    _, _, out = models
    bad = _write(tmp_path / "in.de", ["a b", "  ", "c"])
    _expect_error(["translate", out["translator"], bad], capsys, f"{bad}, line 2", "empty line")
    _expect_error(["translate", out["translator"], _write(tmp_path / "ok.de", ["a"]),
                   "--attention", tmp_path / "x.png", "--sentence", "2"], capsys,
                  "--sentence: expected a line number in 1..1")
    _expect_error(["translate", out["translator"], tmp_path / "ok.de", "--beam", "0"], capsys,
                  "--beam")


def test_condition_and_model_kind_mismatches(models, capsys):
    _, files, out = models
    _expect_error(["generate", out["lm"], "--condition", "1"], capsys,
                  f"{out['lm']} is not a conditioned model")
    _expect_error(["generate", out["conditioned-lm"]], capsys,
                  "is a conditioned model; give a label or a vector")
    _expect_error(["generate", out["conditioned-lm"], "--condition", "2"], capsys,
                  "unknown label '2'")
    _expect_error(["predict", out["translator"], files["val.de"]], capsys,
                  "'rnnkit predict' is for classifier and tagger", "'translator'",
                  "use 'rnnkit translate'")
    _expect_error(["eval", out["conditioned-lm"], "--data", files["conditioned"]], capsys,
                  "does not evaluate 'conditioned_lm' models")


def test_config_with_an_unknown_key(models, tmp_path, capsys):
    _, files, _ = models
    config = tmp_path / "c.toml"
    config.write_text(f'data = "{files["labelled"]}"\nbogus_option = 3\n', encoding="utf-8")
    _expect_error(["train", "classifier", "--config", config, "--out", tmp_path / "m"], capsys,
                  str(config), "unknown option(s) ['bogus_option']",
                  "rnnkit train classifier --help")
    assert not (tmp_path / "m").exists()
