"""``rnnkit export`` of every task's model (tiny models trained one step through the task
APIs): onnxruntime runs each exported graph with PyTorch's results (max abs difference
<= 1e-4 in fp32) at sizes other than the traced example; the torch-export format's
programs run at other sizes too; ``examples/onnx_generate.py`` (onnxruntime and numpy, no
torch) writes the very text of ``rnnkit generate --greedy``; bad input is one error line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import expect_cli_error, run_cli
from parity import TOL, max_diff, session
from rnnkit.models.seq2seq import BOS_ID
from rnnkit.tasks import classifier, lm, tagger, translator
from tiny_data import tiny_files

ROOT = Path(__file__).resolve().parents[2]


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny models of every task, trained one step, each exported with the CLI."""
    root = tmp_path_factory.mktemp("export")
    f = tiny_files(root, n=16, seed=3)
    steps = {"max_steps": 1}
    models = {k: root / k for k in ("lm_char", "lm_word", "classifier", "tagger",
                                    "translator")}
    for level in ("char", "word"):
        lm.train_lm(lm.LMDataConfig(data=f["text"], level=level),
                    {"hidden_size": 8, "num_layers": 2, "cell": "lstm"}, steps,
                    models[f"lm_{level}"], log=_quiet, sample_chars=0)
    classifier.train_classifier(
        classifier.ClassifierDataConfig(train=f["labelled"], valid=f["labelled"]),
        {"hidden_size": 6, "embedding_size": 5, "num_layers": 1, "pooling": "attention",
         "cell": "gru"}, steps, models["classifier"], log=_quiet)
    tagger.train_tagger(tagger.TaggerDataConfig(train=f["tagged"], valid=f["tagged"]),
                        {"hidden_size": 6, "embedding_size": 5, "num_layers": 1,
                         "char_hidden_size": 4, "char_embedding_size": 3, "cell": "gru"},
                        steps, models["tagger"], log=_quiet)
    pairs = f"{f['source']},{f['target']}"
    translator.train_translator(
        translator.TranslationDataConfig(train=pairs, valid=pairs, level="word", min_count=1),
        {"hidden_size": 6, "embedding_size": 5, "cell": "lstm", "input_feeding": True,
         "decoder_layers": 2}, steps, models["translator"], log=_quiet)
    exported = {}
    for name, directory in models.items():
        out = root / f"{name}_onnx"
        code = _cli_export(directory, out)
        assert code == 0
        exported[name] = out
    return models, exported, f


def _cli_export(directory, out, *extra):
    from rnnkit.cli import main
    return main(["export", str(directory), "--format", "onnx", "--out", str(out), *extra])


def test_metadata_describes_the_graphs_and_copies_the_vocabulary(trained):
    models, exported, _ = trained
    meta = json.loads((exported["lm_word"] / "export.json").read_text())
    assert meta["task"] == "lm" and meta["rnnkit"] and meta["command"].startswith(
        "rnnkit export ")
    assert sorted(meta["graphs"]) == ["sequence", "step"]
    assert [s["name"] for s in meta["states"]] == ["h_l0", "c_l0", "h_l1", "c_l1"]
    step = meta["graphs"]["step"]
    assert [i["name"] for i in step["inputs"]] == ["tokens", "h_l0", "c_l0", "h_l1", "c_l1"]
    for spec, value in zip(step["inputs"], session(exported["lm_word"] / "step.onnx")
                           .get_inputs()):
        assert spec["name"] == value.name and spec["shape"] == value.shape
    assert meta["special_ids"] == {"pad": 0, "unk": 1, "line_end": 2, "eos": 2}
    assert (exported["lm_word"] / "tokenizer.json").read_bytes() == \
        (models["lm_word"] / "tokenizer.json").read_bytes()
    import onnx
    for name in ("lm_word", "translator"):
        for path in exported[name].glob("*.onnx"):
            onnx.checker.check_model(str(path), full_check=True)     # valid ONNX, typed
    tagged = json.loads((exported["tagger"] / "export.json").read_text())
    assert sorted(tagged["vocabulary_files"]) == ["chars/tokenizer.json", "tags.json",
                                                  "words/tokenizer.json"]


@pytest.mark.parametrize("level", ["char", "word"])
def test_trained_lm_graphs_match_pytorch(trained, level):
    _, exported, _ = trained
    model, _, _ = lm.load_lm(trained[0][f"lm_{level}"])
    sequence = session(exported[f"lm_{level}"] / "sequence.onnx")
    step = session(exported[f"lm_{level}"] / "step.onnx")
    names = [i.name for i in step.get_inputs()][1:]
    for T, B in [(1, 1), (9, 4)]:
        tokens = torch.randint(0, model.config.vocab_size, (T, B))
        state = tuple(tuple(0.3 * torch.randn_like(t) for t in s)
                      for s in model.initial_state(B))
        flat = [t for s in state for t in s]
        with torch.no_grad():
            hidden, final = model(tokens, state)
            step_lp, step_state = model.step(tokens[-1], state)
        feeds = {n: t.numpy() for n, t in zip(names, flat)}
        got = sequence.run(None, {"tokens": tokens.numpy(), **feeds})
        assert max_diff(got, [model.log_probs(hidden), *[t for s in final for t in s]]) <= TOL
        got = step.run(None, {"tokens": tokens[-1].numpy(), **feeds})
        assert max_diff(got, [step_lp, *[t for s in step_state for t in s]]) <= TOL


def test_classifier_graph_matches_pytorch(trained):
    _, exported, _ = trained
    model, _, _ = classifier.load_classifier(trained[0]["classifier"])
    graph = session(exported["classifier"] / "classifier.onnx")
    V = model.config.vocab_size
    for lengths in ([1], [7, 3, 5, 1, 7]):
        lengths = torch.tensor(lengths)
        tokens = torch.randint(3, V, (int(lengths.max()), len(lengths)))
        tokens[torch.arange(tokens.shape[0])[:, None] >= lengths[None]] = 0     # <pad>
        with torch.no_grad():
            expected = torch.log_softmax(model(tokens, lengths), -1)
        got = graph.run(None, {"tokens": tokens.numpy(), "lengths": lengths.numpy()})
        assert max_diff(got, [expected]) <= TOL


def test_tagger_graph_with_characters_matches_pytorch(trained):
    _, exported, _ = trained
    model, word_tok, char_tok, _ = tagger.load_tagger(trained[0]["tagger"])
    assert model.chars is not None
    graph = session(exported["tagger"] / "tagger.onnx")
    assert [i.name for i in graph.get_inputs()] == ["words", "lengths", "chars",
                                                     "char_lengths", "word_index"]
    sentences = [["the", "cat", "sat", "zebras-unseen", "on", "a", "mat"], ["dog"],
                 ["a", "mat", "ran"]]
    words = [word_tok.encode_words(s) for s in sentences]
    words, lengths, _, chars, char_lengths, index = tagger.collate(words, None, sentences,
                                                                   char_tok)
    with torch.no_grad():
        expected = model(words, lengths, chars, char_lengths, index)
    got = graph.run(None, {"words": words.numpy(), "lengths": lengths.numpy(),
                           "chars": chars.numpy(), "char_lengths": char_lengths.numpy(),
                           "word_index": index.numpy()})
    mask = (torch.arange(words.shape[0])[:, None] < lengths[None]).numpy()
    assert max_diff([got[0][mask]], [expected[torch.from_numpy(mask)]]) <= TOL


def test_translator_graphs_greedy_decode_as_pytorch(trained):
    _, exported, _ = trained
    model, _, _, _ = translator.load_translator(trained[0]["translator"])
    encoder = session(exported["translator"] / "encoder.onnx")
    decoder = session(exported["translator"] / "decoder_step.onnx")
    assert [i.name for i in decoder.get_inputs()] == ["tokens", "h", "c", "memory", "keys",
                                                      "mask", "feed"]
    lengths = torch.tensor([5, 2, 6])
    source = torch.randint(3, model.config.source_vocab_size, (6, 3))
    source[torch.arange(6)[:, None] >= lengths[None]] = 0
    with torch.no_grad():
        memory, mask, state = model.encode(source, lengths)
        keys = model.attention.keys(memory)
    got = encoder.run(None, {"source": source.numpy(), "lengths": lengths.numpy()})
    assert max_diff(got, [memory, keys, mask, *state]) <= TOL
    memory_o, keys_o, mask_o, *state_o = got
    tokens = torch.full((3,), BOS_ID)
    feed = torch.zeros(3, model.config.hidden_size)
    feed_o = feed.numpy()
    for _ in range(4):                  # greedy steps, each side feeding itself back
        with torch.no_grad():
            logits, weights, state, feed = model.decode_step(tokens, state, feed, memory,
                                                             keys, mask)
        got = decoder.run(None, {"tokens": tokens.numpy(), "h": state_o[0], "c": state_o[1],
                                 "memory": memory_o, "keys": keys_o, "mask": mask_o,
                                 "feed": feed_o})
        assert max_diff(got, [torch.log_softmax(logits, -1), weights[0], *state, feed]) <= TOL
        tokens = logits.argmax(-1)
        assert (got[0].argmax(-1) == tokens.numpy()).all()
        state_o, feed_o = got[2:4], got[4]


def _generate(args) -> bytes:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, check=True,
                          cwd=ROOT, env=env, timeout=120).stdout


@pytest.mark.parametrize(("level", "prime"), [("char", "the c"), ("word", "the cat\ndog")])
def test_onnx_generate_example_writes_rnnkit_generates_text(trained, capsys, level, prime):
    models, exported, _ = trained
    code, expected, _ = run_cli(["generate", models[f"lm_{level}"], "--greedy", "--prime",
                                 prime, "--length", "25"], capsys)
    assert code == 0
    # the example in a fresh interpreter, which must not have imported torch
    script = ("import runpy, sys; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__'); "
              "assert 'torch' not in sys.modules, 'torch was imported'")
    got = _generate(["-c", script, str(ROOT / "examples" / "onnx_generate.py"),
                     str(exported[f"lm_{level}"]), "--prime", prime, "--length", "25"])
    assert got == expected.encode("utf-8")
    assert len(expected) > len(prime) + 1


def test_onnx_generate_example_refuses_what_is_not_an_export(trained, tmp_path):
    """A folder that is not an export, an export of another task, an ONNX file that is not
    a graph: one line naming the file, exit 2."""
    models, exported, _ = trained
    fake = tmp_path / "fake"
    shutil.copytree(exported["lm_char"], fake)
    (fake / "step.onnx").write_bytes(b"not a graph")
    other = tmp_path / "other"
    other.mkdir()
    (other / "export.json").write_text('{"format": "something else"}')
    for folder, fragment in ((models["lm_char"], "export.json: cannot be read"),
                             (other, "not an rnnkit export"),
                             (fake, "step.onnx: not an ONNX graph onnxruntime can run")):
        done = subprocess.run([sys.executable, str(ROOT / "examples" / "onnx_generate.py"),
                               str(folder), "--length", "3"], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("onnx_generate: error: ") and fragment in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_torch_export_format_runs_at_other_sizes(trained, tmp_path):
    """The .pt2 programs, written with --force into a folder that is not empty."""
    models, _, _ = trained
    out = tmp_path / "pt2"
    out.mkdir()
    (out / "old.txt").write_text("kept")
    from rnnkit.cli import main
    assert main(["export", str(models["lm_word"]), "--format", "torch-export", "--out",
                 str(out), "--force"]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["export_format"] == "torch-export" and "--force" in meta["command"]
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "old.txt",
                                                      "sequence.pt2", "step.pt2",
                                                      "tokenizer.json"]
    model, _, _ = lm.load_lm(models["lm_word"])
    program = torch.export.load(out / meta["graphs"]["sequence"]["file"]).module()
    tokens = torch.randint(0, model.config.vocab_size, (11, 5))
    state = tuple(tuple(0.3 * torch.randn_like(t) for t in s) for s in model.initial_state(5))
    with torch.no_grad():
        hidden, final = model(tokens, state)
        got = program(tokens, tuple(t for s in state for t in s))
    assert max_diff([g.numpy() for g in got],
                    [model.log_probs(hidden), *[t for s in final for t in s]]) <= TOL


def test_bad_input_is_one_error_line(trained, tmp_path, capsys):
    models, exported, _ = trained
    expect_cli_error(["export", tmp_path, "--out", tmp_path / "o"], capsys, str(tmp_path),
                     "config.json")
    expect_cli_error(["export", models["lm_word"], "--format", "tflite", "--out",
                      tmp_path / "o"], capsys, "--format", "tflite")
    expect_cli_error(["export", models["lm_word"], "--out", exported["lm_word"]], capsys,
                     "--out", str(exported["lm_word"]), "--force")
    afile = tmp_path / "file"
    afile.write_text("x")
    expect_cli_error(["export", models["lm_word"], "--out", afile], capsys, "--out",
                     "not a folder")
    broken = tmp_path / "broken"
    shutil.copytree(models["lm_word"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["model"]["hidden_size"] = 12
    (broken / "config.json").write_text(json.dumps(config))
    expect_cli_error(["export", broken, "--out", tmp_path / "o2"], capsys,
                     "model.safetensors")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()
    expect_cli_error(["export", models["lm_word"]], capsys, "--out")


def test_conditioned_lm_folder_exports_with_its_initial_state_graph(trained, tmp_path):
    from rnnkit.tasks import conditioned_lm

    _, _, f = trained
    directory = tmp_path / "clm"
    conditioned_lm.train_conditioned_lm(
        conditioned_lm.ConditionedLMDataConfig(train=f["labelled"], valid=f["labelled"]),
        {"hidden_size": 6, "num_layers": 1, "cell": "gru"}, {"max_steps": 1}, directory,
        log=_quiet)
    out = tmp_path / "clm-pt2"
    from rnnkit.cli import main
    assert main(["export", str(directory), "--format", "torch-export", "--out",
                 str(out)]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["task"] == "conditioned_lm" and meta["config"]["labels"] == ["0", "1"]
    assert sorted(meta["graphs"]) == ["initial_state", "sequence", "step"]
    assert meta["states"][-1]["name"] == "condition_vector"
    assert "labels.json" in meta["vocabulary_files"]
    model, _, _ = conditioned_lm.load_conditioned_lm(directory)
    program = torch.export.load(out / "initial_state.pt2").module()
    labels = torch.tensor([1, 0, 1])
    with torch.no_grad():
        expected = model.initial_state(3, condition=labels)
    assert max_diff([t.numpy() for t in program(labels)], list(expected)) <= TOL
