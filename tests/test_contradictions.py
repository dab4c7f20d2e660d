"""Options that contradict each other, or that the chosen cell, head, mode or task does not
use, are refused before any work starts (issue 10, item 6), and the last input clean-ups
(item 7); then the malformed-input table: every bad input exits 2 with one
``rnnkit: error:`` line naming the input, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import expect_cli_error, run_cli
from tiny_data import tiny_files, write_lines

from rnnkit.data.labelled import read_tagged
from rnnkit.generate import sample_tokens
from rnnkit.models.lm import LMConfig
from rnnkit.tasks.recipe import train_state_meta
from rnnkit.tasks.classifier import ClassifierDataConfig

TEXT = ["the cat sat on the mat", "the dog sat on the log"] * 20
CONLLU_ROW = "{}\t{}\t{}\tNOUN\t_\t_\t0\tdep\t_\t_"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny files of every task, a trained character LM ``M`` (a resumable run), and
    malformed files: a CoNLL-U with a repeated ID, a config of invalid UTF-8."""
    root = tmp_path_factory.mktemp("contradictions")
    files = tiny_files(root)
    text = write_lines(root / "corpus.txt", TEXT)
    model = root / "model"
    code = _main(["train", "lm", "--data", text, "--out", model, "--level", "char",
                  "--hidden", "8", "--layers", "1", "--batch-size", "4", "--bptt", "8",
                  "--max-steps", "2", "--sample", "0", "--no-progress"])
    assert code == 0
    folder = root / "split"
    folder.mkdir()
    write_lines(folder / "train.tsv", Path(files["labelled"]).read_text().splitlines())
    write_lines(folder / "valid.tsv", Path(files["labelled"]).read_text().splitlines())
    dup = write_lines(root / "dup.conllu", ["# sent_id = 1", CONLLU_ROW.format(1, "a", "a"),
                                            CONLLU_ROW.format(2, "cat", "cat"),
                                            CONLLU_ROW.format(2, "dog", "dog"), ""])
    bad_config = root / "latin.toml"
    bad_config.write_bytes(b'level = "char"\nhidden = 8 # caf\xe9\n')
    out_five = root / "out5.toml"
    out_five.write_text(f'data = "{text}"\nout = 5\n', encoding="utf-8")
    hidden_nine = root / "hidden9.toml"
    hidden_nine.write_text(f'data = "{text}"\nhidden = 9\n', encoding="utf-8")
    bad = _malformed_files(root, model)
    return {"T": text, "M": str(model), "D": str(folder), "L": files["labelled"],
            "C": dup, "B": str(bad_config), "O5": str(out_five), "H9": str(hidden_nine), "R": str(root),
            "G": files["tagged"], "S": files["source"], "P": str(root / "pairs"), **bad}


class _Trap:
    """Unpickled, it creates the file ``path``: proof that a weights file was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malformed_files(root: Path, model: Path) -> dict[str, str]:
    """Tiny broken inputs of every kind for the table (no training)."""
    import pickle
    import shutil

    def put(name, data) -> str:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return str(path)

    (root / "nofolder").mkdir()                              # a folder without train file
    (root / "nodir").mkdir()                                 # a model dir without config.json
    put("badjson/config.json", "{not json")
    pickled = root / "pickled"
    shutil.copytree(model, pickled)
    for weights in pickled.glob("*.safetensors"):           # a pickle that, if ever
        weights.write_bytes(pickle.dumps(_Trap(root / "UNPICKLED")))   # loaded, leaves a file
    put("uneven/train.de", "a b\nc d\ne f\n")
    put("uneven/train.en", "A B\nC D\n")
    for split in ("train", "valid"):                         # a good translator folder
        for lang in ("de", "en"):
            put(f"pairs/{split}.{lang}", "a b\nc d\ne f\n" * 4)
    return {
        "E": put("empty.txt", b""), "U": put("latin1.txt", b"caf\xe9 au lait\n" * 5),
        "NT": put("notab.tsv", "0\tgood line\nno tab here\n"),
        "LO": put("labelonly.tsv", "0\tgood line\n1\t\n"),
        "CC": put("cols.conllu", "1\ta\ta\tNOUN\n\n"),
        "UE": str(root / "uneven"), "NF": str(root / "nofolder"), "ND": str(root / "nodir"),
        "BJ": str(root / "badjson"), "PK": str(pickled),
        "NTOML": put("not.toml", "this is = = not toml [\n"),
        "UKEY": put("unknown.toml", 'hidden = 8\nno_such_key = 1\n'),
        "WTYPE": put("wrongtype.toml", 'hidden = "big"\n'),
        "LTAB": put("listtable.toml", 'hidden = 8\ncell_options = [1, 2]\n'),
        "LINT": put("listint.toml", 'hidden = [8, 9]\n'),
        "EU": put("empty.tsv", b""), "EC": put("empty.conllu", b""),
    }


def _main(args) -> int:
    from rnnkit.cli import main

    return main([str(a) for a in args])


def _args(template: str, world: dict) -> list[str]:
    return [part.format(**world) for part in template.split()]


# -- item 6: contradictions --------------------------------------------------------------

def test_cell_options_of_another_cell_are_refused(world, tmp_path, capsys):
    expect_cli_error(["train", "lm", "--data", world["T"], "--out", tmp_path / "a",
                      "--cell", "gru", "--peephole"], capsys, "'gru'", "peephole")
    expect_cli_error(["train", "lm", "--data", world["T"], "--out", tmp_path / "b",
                      "--cell", "lstm", "--nonlinearity", "relu"], capsys, "'lstm'",
                     "nonlinearity")


def test_head_options_only_for_their_head(world, tmp_path, capsys):
    expect_cli_error(["train", "lm", "--data", world["T"], "--out", tmp_path / "a",
                      "--softmax", "full", "--cutoffs", "10,20"], capsys, "--cutoffs",
                     "--softmax")
    expect_cli_error(["train", "lm", "--data", world["T"], "--out", tmp_path / "b",
                      "--softmax", "adaptive", "--classes", "3"], capsys, "--classes",
                     "--softmax")
    code, out, err = run_cli(["train", "lm", "--data", world["T"], "--out", tmp_path / "c",
                              "--cutoffs", "4"], capsys)       # refused before the data is read
    assert code == 2 and "--cutoffs" in err and "vocabulary" not in out
    with pytest.raises(ValueError, match="adaptive_cutoffs.*softmax='full'"):
        LMConfig(vocab_size=50, softmax="full", adaptive_cutoffs=(10, 20))
    with pytest.raises(ValueError, match="num_classes.*softmax='adaptive'"):
        LMConfig(vocab_size=50, softmax="adaptive", adaptive_cutoffs=(10,), num_classes=4)
    LMConfig(vocab_size=50, softmax="class", num_classes=4)           # their own heads
    LMConfig(vocab_size=50, softmax="adaptive", adaptive_cutoffs=(10, 20))


def test_sampling_options_only_when_sampling(world, capsys):
    m = world["M"]
    for mode, flag in [(["--greedy"], ["--temperature", "0.5"]), (["--beam", "3"],
                       ["--top-p", "0.5"]), (["--beam", "3"], ["--top-k", "5"]),
                       (["--greedy"], ["--top-k", "5"])]:
        expect_cli_error(["generate", m, "--length", "3", *mode, *flag], capsys, mode[0],
                         flag[0])
    expect_cli_error(["generate", m, "--greedy", "--beam", "2"], capsys, "--greedy", "--beam")
    with pytest.raises(ValueError, match="greedy.*temperature=0.5"):
        sample_tokens(object(), [1], max_tokens=3, greedy=True, temperature=0.5)
    with pytest.raises(ValueError, match="greedy.*top_p=0.5"):
        sample_tokens(object(), [1], max_tokens=3, greedy=True, top_p=0.5)
    code, _, _ = run_cli(["generate", m, "--length", "3", "--greedy", "--json"], capsys)
    assert code == 0
    code, text, _ = run_cli(["generate", m, "--length", "3", "--temperature", "0.5",
                             "--top-k", "3", "--seed", "1", "--json"], capsys)
    assert code == 0 and "text" in json.loads(text)


def test_data_folder_and_split_files_are_exclusive(world, tmp_path, capsys):
    expect_cli_error(["train", "classifier", "--data", world["D"], "--train", world["L"],
                      "--valid", world["L"], "--out", tmp_path / "c"], capsys, "--data",
                     "--train")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    with pytest.raises(ValueError, match="not both"):
        ClassifierDataConfig(data=world["D"], valid=world["L"])


def test_resume_refuses_settings_it_cannot_change(world, capsys):
    before = Path(world["M"], "run.json").read_bytes()
    err = expect_cli_error(["train", "lm", "--resume", "--out", world["M"], "--hidden", "999"],
                           capsys, "--resume", "--hidden", "--epochs", "--max-steps")
    assert "--lr" not in err.split("only")[1]
    expect_cli_error(["train", "lm", "--resume", "--out", world["M"], "--data", world["L"],
                      "--lr", "0.1"], capsys, "--data", "--lr", "the run has 0.002")
    config = Path(world["R"], "resume.toml")
    config.write_text('hidden = 999\nepochs = 3\n', encoding="utf-8")
    expect_cli_error(["train", "lm", "--resume", "--out", world["M"], "--config", config],
                     capsys, "hidden_size", str(config))
    assert Path(world["M"], "run.json").read_bytes() == before


def test_resume_accepts_the_settings_the_run_has(world, tmp_path, monkeypatch, capsys):
    """The command that started a run, with --resume and a new budget added, resumes it:
    options given with the run's own values (a data path spelled relatively, a config
    file's keys, a cell option at its default) are not refused."""
    import shutil

    out = tmp_path / "m"
    shutil.copytree(world["M"], out)
    monkeypatch.chdir(Path(world["T"]).parent)
    config = tmp_path / "same.toml"
    config.write_text('hidden = 8\nlevel = "char"\n[cell_options]\npeephole = false\n',
                      encoding="utf-8")
    code, _, err = run_cli(["train", "lm", "--resume", "--out", out, "--data",
                            Path(world["T"]).name, "--level", "char", "--hidden", "8",
                            "--layers", "1", "--batch-size", "4", "--bptt", "8",
                            "--config", config, "--max-steps", "3", "--sample", "0",
                            "--no-progress"], capsys)
    assert code == 0, err
    assert train_state_meta(out)["step"] == 3
    expect_cli_error(["train", "lm", "--resume", "--out", out, "--layers", "2", "--locked-dropout",
                      "--max-steps", "4"], capsys, "--layers 2 (the run has 1)",
                     "--locked-dropout (the run was started without it)")
    run = json.loads((out / "run.json").read_text())        # an older rnnkit's: no precision
    del run["train"]["precision"]
    (out / "run.json").write_text(json.dumps(run), encoding="utf-8")
    code, _, err = run_cli(["train", "lm", "--resume", "--out", out, "--precision", "fp32",
                            "--max-steps", "3"], capsys)
    assert code == 0, err
    config.write_text("[cell_options]\nalpha = 0.9\n", encoding="utf-8")   # no such option
    expect_cli_error(["train", "lm", "--resume", "--out", out, "--config", config], capsys,
                     f"cell_options.alpha = 0.9 in {config} (not in the run)")
    expect_cli_error(["train", "classifier", "--resume", "--out", out, "--data",
                      world["T"]], capsys, "a 'lm' run, not a 'classifier' run")


def test_activations_max_chars_and_sample_are_checked_first(world, tmp_path, capsys):
    page = tmp_path / "page.html"
    expect_cli_error(["activations", world["M"], "--text", world["T"], "--out", page,
                      "--max-chars", "-1"], capsys, "--max-chars", "-1")
    assert not page.exists()
    out = tmp_path / "s"
    expect_cli_error(["train", "lm", "--data", world["T"], "--out", out, "--sample", "-1"],
                     capsys, "--sample")
    assert not out.exists() or not any(out.iterdir())


# -- item 7: clean-ups ------------------------------------------------------------------

def test_toml_config_with_bom_is_accepted(world, tmp_path, capsys):
    config = tmp_path / "bom.toml"
    config.write_bytes("\ufeff".encode() + f'data = "{world["T"]}"\nlevel = "char"\n'
                       'hidden = 6\nlayers = 1\nmax_steps = 1\nbatch_size = 4\nbptt = 8\n'
                       .encode())
    out = tmp_path / "m"
    code, _, err = run_cli(["train", "lm", "--config", config, "--out", out, "--sample", "0",
                            "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model"]["hidden_size"] == 6


def test_config_of_invalid_utf8_names_the_file(world, tmp_path, capsys):
    expect_cli_error(["train", "lm", "--config", world["B"], "--out", tmp_path / "x"], capsys,
                     world["B"], "line 2", "UTF-8")


@pytest.mark.parametrize(("task", "option", "flag"), [
    ("lm", "--hidden 0", "--hidden (hidden_size)"),
    ("lm", "--softmax full --cutoffs 10,20", "--cutoffs"),
    ("classifier", "--layers 0", "--layers (num_layers)"),
    ("tagger", "--dropout 1", "--dropout: "),      # the key said only where it differs
    ("translator", "--batch-size 0", "--batch-size (batch_size)"),
    ("conditioned-lm", "--lr -1", "--lr: "),
    ("lm", "--precision fp8", "--precision: expected one of"),
])
def test_every_option_is_checked_before_the_data_is_read(world, tmp_path, capsys, task,
                                                         option, flag):
    """A bad model, data or training option is refused naming its flag before the data
    is looked at (the data named here does not exist) and before --out is made."""
    out = tmp_path / "out"
    err = expect_cli_error(["train", task, "--data", str(tmp_path / "absent"), "--out",
                            str(out), *option.split()], capsys, flag)
    assert "absent" not in err and not out.exists()


def test_conllu_repeated_id_names_file_and_line(world):
    with pytest.raises(ValueError, match=r"dup\.conllu, line 4: ID 2 again.*line 3"):
        read_tagged(world["C"])
    ok = write_lines(Path(world["R"]) / "two.conllu",
                     [CONLLU_ROW.format(1, "a", "a"), CONLLU_ROW.format(2, "b", "b"), "",
                      CONLLU_ROW.format(1, "c", "c"), CONLLU_ROW.format(2, "d", "d"), ""])
    sentences, fmt = read_tagged(ok)                 # IDs restart with every sentence
    assert fmt == "conllu" and [s.words for s in sentences] == [["a", "b"], ["c", "d"]]


# -- the malformed-input table -------------------------------------------------------------
# (id, arguments with {placeholders} of the world fixture and {X}: a fresh directory,
#  fragments the one error line must hold: the input it names)
# 102 cases (issue 10, "Must show"): contradictions, bad data files of every task, bad
# option values, bad TOML files, use commands on bad model directories and values. The
# broken files are made by _malformed_files; only the world's one tiny LM is trained.

TABLE = [
    ("gru-peephole", "train lm --data {T} --out {X} --cell gru --peephole", ["peephole"]),
    ("lstm-nonlinearity", "train lm --data {T} --out {X} --cell lstm --nonlinearity relu",
     ["nonlinearity"]),
    ("full-cutoffs", "train lm --data {T} --out {X} --softmax full --cutoffs 10,20",
     ["--cutoffs", "--softmax"]),
    ("full-classes", "train lm --data {T} --out {X} --classes 4", ["--classes", "--softmax"]),
    ("class-cutoffs", "train lm --data {T} --out {X} --softmax class --cutoffs 10",
     ["--cutoffs", "--softmax"]),
    ("greedy-temperature", "generate {M} --greedy --temperature 0.5",
     ["--greedy", "--temperature"]),
    ("beam-top-p", "generate {M} --beam 3 --top-p 0.5", ["--beam", "--top-p"]),
    ("beam-top-k", "generate {M} --beam 3 --top-k 5", ["--beam", "--top-k"]),
    ("greedy-top-k", "generate {M} --greedy --top-k 5", ["--greedy", "--top-k"]),
    ("greedy-beam", "generate {M} --greedy --beam 2", ["--greedy", "--beam"]),
    ("data-and-train-valid", "train classifier --data {D} --train {L} --valid {L} --out {X}",
     ["--data", "--train"]),
    ("data-and-valid", "train classifier --data {D} --valid {L} --out {X}",
     ["--data", "--valid"]),
    ("resume-hidden", "train lm --resume --out {M} --hidden 999", ["--resume", "--hidden"]),
    ("resume-data", "train lm --resume --out {M} --data {L}", ["--resume", "--data"]),
    ("resume-cell-option", "train lm --resume --out {M} --peephole",
     ["--resume", "--peephole"]),
    ("max-chars-negative", "activations {M} --text {T} --out {X}/p.html --max-chars -1",
     ["--max-chars"]),
    ("sample-negative", "train lm --data {T} --out {X} --sample -1", ["--sample"]),
    ("config-invalid-utf8", "train lm --config {B} --out {X}", ["{B}"]),
    ("config-out-number", "train lm --config {O5}", ["{O5}", "out"]),
    ("resume-config-file", "train lm --resume --out {M} --config {H9}",
     ["--resume", "hidden_size = 9 in {H9}"]),
    ("config-missing", "train lm --config {R}/nothing.toml --out {X}", ["nothing.toml"]),
    ("conllu-repeated-id", "train tagger --data {C} --valid-fraction 0.5 --out {X}",
     ["dup.conllu", "line 4"]),
    ("hidden-zero", "train lm --data {T} --out {X} --hidden 0", ["hidden_size"]),
    ("dropout-one", "train lm --data {T} --out {X} --dropout 1", ["dropout"]),
    ("data-missing", "train lm --data {R}/none.txt --out {X}", ["none.txt"]),
    ("generate-length", "generate {M} --length -1", ["--length"]),
    ("generate-beam", "generate {M} --beam -1", ["--beam"]),
    ("generate-temperature", "generate {M} --temperature 0", ["temperature"]),
    ("generate-top-p", "generate {M} --top-p 2", ["top_p"]),
    ("generate-condition", "generate {M} --condition x", ["--condition"]),
    ("eval-beam", "eval {M} --data {T} --beam 0", ["--beam"]),
    ("model-missing", "generate {R}/no-model", ["no-model"]),
    ("lm-with-classifier-data-option", "train lm --data {T} --out {X} --train {L}",
     ["--train"]),
    # bad data files, every task
    ("lm-empty-file", "train lm --data {E} --out {X}", ["empty.txt"]),
    ("lm-not-utf8", "train lm --data {U} --out {X}", ["latin1.txt"]),
    ("lm-data-folder-without-train", "train lm --data {NF} --out {X}", ["nofolder"]),
    ("lm-valid-fraction-text", "train lm --data {T} --valid-fraction {R}/nothing.txt --out {X}",
     ["--valid-fraction", "nothing.txt"]),
    ("lm-valid-fraction-one", "train lm --data {T} --valid-fraction 1 --out {X}",
     ["valid_fraction"]),
    ("classifier-missing", "train classifier --data {R}/none.tsv --out {X}", ["none.tsv"]),
    ("classifier-folder-without-train", "train classifier --data {NF} --out {X}",
     ["nofolder"]),
    ("classifier-empty", "train classifier --data {EU} --out {X}", ["empty.tsv"]),
    ("classifier-not-utf8", "train classifier --data {U} --out {X}", ["latin1.txt"]),
    ("classifier-line-without-tab", "train classifier --data {NT} --out {X}",
     ["notab.tsv", "line 2"]),
    ("classifier-label-only", "train classifier --data {LO} --out {X}",
     ["labelonly.tsv", "line 2"]),
    ("classifier-valid-missing",
     "train classifier --train {L} --valid {R}/nothing.tsv --out {X}", ["nothing.tsv"]),
    ("tagger-missing", "train tagger --data {R}/none.conllu --out {X}", ["none.conllu"]),
    ("tagger-empty", "train tagger --data {EC} --out {X}", ["empty.conllu"]),
    ("tagger-not-utf8", "train tagger --data {U} --out {X}", ["latin1.txt"]),
    ("tagger-conllu-columns", "train tagger --data {CC} --out {X}", ["cols.conllu", "line 1"]),
    ("tagger-folder-without-train", "train tagger --data {NF} --out {X}", ["nofolder"]),
    ("translator-missing", "train translator --data {R}/none --out {X}", ["none"]),
    ("translator-uneven-pair", "train translator --data {UE} --out {X}", ["uneven"]),
    ("translator-folder-without-train", "train translator --data {NF} --out {X}",
     ["nofolder"]),
    ("conditioned-missing", "train conditioned-lm --data {R}/none.tsv --out {X}",
     ["none.tsv"]),
    ("conditioned-empty", "train conditioned-lm --data {EU} --out {X}", ["empty.tsv"]),
    ("conditioned-line-without-tab", "train conditioned-lm --data {NT} --out {X}",
     ["notab.tsv", "line 2"]),
    # bad option values
    ("layers-zero", "train lm --data {T} --out {X} --layers 0", ["layers"]),
    ("hidden-negative", "train lm --data {T} --out {X} --hidden -3", ["hidden"]),
    ("batch-size-zero", "train lm --data {T} --out {X} --batch-size -1", ["batch"]),
    ("bptt-zero", "train lm --data {T} --out {X} --bptt -5", ["bptt"]),
    ("lr-not-a-number", "train lm --data {T} --out {X} --lr fast", ["--lr", "fast"]),
    ("hidden-not-a-number", "train lm --data {T} --out {X} --hidden many", ["--hidden"]),
    ("dropout-above-one", "train classifier --data {L} --out {X} --dropout 1.5", ["dropout"]),
    ("level-unknown", "train lm --data {T} --out {X} --level syllable", ["syllable"]),
    ("softmax-unknown", "train lm --data {T} --out {X} --softmax huge", ["huge"]),
    ("pooling-unknown", "train classifier --data {L} --out {X} --pooling median", ["median"]),
    ("attention-unknown", "train translator --data {P} --out {X} --attention psychic",
     ["psychic"]),
    ("optimizer-unknown", "train lm --data {T} --out {X} --optimizer magic", ["magic"]),
    ("backend-unknown", "train lm --data {T} --out {X} --backend quantum", ["quantum"]),
    ("init-unknown", "train lm --data {T} --out {X} --init random-ish", ["random-ish"]),
    ("cell-unknown", "train lm --data {T} --out {X} --cell nosuchcell", ["nosuchcell"]),
    ("cell-user-path-missing", "train lm --data {T} --out {X} --cell {R}/nocell.py:Cell",
     ["nocell.py"]),
    ("tagger-hidden-zero", "train tagger --data {G} --out {X} --hidden 0", ["hidden"]),
    ("translator-batch-zero", "train translator --data {P} --out {X} --batch-size -1",
     ["batch"]),
    # bad TOML config files
    ("config-not-toml", "train lm --config {NTOML} --out {X}", ["not.toml"]),
    ("config-unknown-key", "train lm --config {UKEY} --out {X}", ["unknown.toml", "no_such_key"]),
    ("config-wrong-type", "train lm --config {WTYPE} --out {X}", ["wrongtype.toml", "hidden"]),
    ("config-list-for-table", "train lm --config {LTAB} --out {X}",
     ["listtable.toml", "cell_options"]),
    ("config-list-for-int", "train lm --config {LINT} --out {X}", ["listint.toml", "hidden"]),
    # use commands on bad model directories and values
    ("eval-model-missing", "eval {R}/no-model --data {T}", ["no-model"]),
    ("eval-no-config", "eval {ND} --data {T}", ["nodir"]),
    ("eval-config-not-json", "eval {BJ} --data {T}", ["badjson"]),
    ("eval-pickled-weights", "eval {PK} --data {T}", ["pickled"]),
    ("generate-pickled-weights", "generate {PK} --length 3", ["pickled"]),
    ("translate-lm-model", "translate {M} {S}", ["{M}"]),
    ("predict-lm-model", "predict {M} {L}", ["{M}"]),
    ("score-missing-file", "score {M} {R}/nothing.txt", ["nothing.txt"]),
    ("score-no-config", "score {ND} {T}", ["nodir"]),
    ("eval-data-missing", "eval {M} --data {R}/nothing.txt", ["nothing.txt"]),
    ("generate-length-text", "generate {M} --length ten", ["--length"]),
    ("generate-top-k-negative", "generate {M} --top-k -2", ["top"]),
    ("generate-top-p-zero", "generate {M} --top-p 0", ["top"]),
    ("generate-temperature-negative", "generate {M} --temperature -1", ["temperature"]),
    ("generate-temperature-nan", "generate {M} --temperature nan", ["temperature"]),
    ("dropout-nan", "train lm --data {T} --out {X} --dropout nan", ["dropout"]),
    ("lr-negative", "train lm --data {T} --out {X} --lr -1", ["lr"]),
    ("epochs-zero", "train lm --data {T} --out {X} --epochs 0", ["epochs"]),
    ("cell-module-missing", "train lm --data {T} --out {X} --cell nopkg.nomod:Cell",
     ["nopkg"]),
    ("translate-missing-file", "translate {M} {R}/nothing.de", ["nothing.de"]),
    ("translate-model-missing", "translate {R}/no-model {S}", ["no-model"]),
    ("activations-text-missing", "activations {M} --text {R}/nothing.txt --out {X}/p.html",
     ["nothing.txt"]),
    ("abbreviated-flag", "train lm --data {T} --out {X} --valid {T}", ["--valid"]),
    ("abbreviated-model-flag", "train lm --data {T} --out {X} --hid 8", ["--hid"]),
    ("tagger-hidden-negative", "train tagger --data {G} --valid-fraction 0.5 "
     "--out {X} --hidden -1", ["hidden"]),
]


@pytest.mark.parametrize(("template", "fragments"), [(t, f) for _, t, f in TABLE],
                         ids=[name for name, _, _ in TABLE])
def test_malformed_input_table(world, tmp_path, capsys, template, fragments):
    places = {**world, "X": str(tmp_path / "out")}
    expect_cli_error(_args(template, places), capsys,
                     *(f.format(**places) for f in fragments))
    assert not Path(world["R"], "UNPICKLED").exists()      # a pickle is never loaded


# -- eval --json is strict JSON ------------------------------------------------------------

def test_eval_json_writes_infinite_figures_as_strings(world, capsys, monkeypatch):
    import dataclasses

    from rnnkit.cli.use import strict_json
    from rnnkit.tasks import TASKS

    figures = {"loss": 812.5, "perplexity": float("inf"), "low": float("-inf"),
               "odd": [float("nan"), 1.5]}
    spec = TASKS["lm"]
    patched = dataclasses.replace(spec, evaluate=lambda *a, **k: dict(figures))
    monkeypatch.setitem(TASKS, "lm", patched)
    code, out, err = run_cli(["eval", world["M"], "--data", world["T"], "--json"], capsys)
    assert code == 0, err
    assert "Infinity" not in out and "NaN" not in out
    parsed = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert parsed == {"loss": 812.5, "perplexity": "inf", "low": "-inf", "odd": ["nan", 1.5]}
    assert json.loads(strict_json({"a": (1.0, float("inf"))})) == {"a": [1.0, "inf"]}
