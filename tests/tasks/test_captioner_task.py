"""Image captioning end to end on tiny scenes the tests draw: train, resume, padded batches
against each caption alone, BLEU (sacrebleu, several references), captions and their
attention pictures, precomputed features, and bad input (images that do not decode,
captions naming missing images, feature files that do not fit)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from conftest import expect_cli_error, run_cli, snapshot, train_losses

from rnnkit.checkpoint import load_tensors
from rnnkit.data.images import load_image, read_captions, read_features
from rnnkit.models.seq2seq import BOS_ID, EOS_ID, TranslationSearch
from rnnkit.tasks import captioner as cap
from rnnkit.train import TrainConfig

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 60, 220)}
MODEL = {"conv_channels": 4, "conv_layers": 2, "embedding_size": 8, "hidden_size": 16,
         "dropout": 0.0}
SIZE = 16


def draw_scene(path, colour: str, side: str) -> None:
    """A 16×16 black image with a square of ``colour`` on the left or right."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE))
    x = 1 if side == "left" else 9
    ImageDraw.Draw(image).rectangle([x, 5, x + 5, 10], fill=COLOURS[colour])
    image.save(path)


def write_scenes(folder, split: str, n: int, rng) -> list[tuple[str, str, str]]:
    """``n`` scenes as ``folder/{split}.tsv`` (two captions each) and their PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    scenes, lines = [], []
    for k in range(n):
        colour, side = rng.choice(list(COLOURS)), rng.choice(["left", "right"])
        name = f"{split}{k}.png"
        draw_scene(folder / name, colour, side)
        scenes.append((name, colour, side))
        lines += [f"{name}\ta {colour} square on the {side}",
                  f"{name}\tthe {colour} square is {side}"]
    (folder / f"{split}.tsv").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    rng = random.Random(0)
    write_scenes(folder, "train", 24, rng)
    write_scenes(folder, "valid", 6, rng)
    return folder


def _data(folder, **options):
    return cap.CaptionDataConfig(**{"data": str(folder), "image_size": SIZE, "batch_size": 8,
                                    **options})


def _train_cfg(**options):
    return TrainConfig(**{"epochs": 100, "lr": 0.02, "log_every": 5, "progress": False,
                          **options})


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("captioner") / "m"
    summary = cap.train_captioner(_data(scenes), MODEL, _train_cfg(max_steps=60), out,
                                  log=_quiet)
    return out, summary


def _images(folder, split):
    return [str(folder / c.name) for c in read_captions(folder / f"{split}.tsv")][::2]


# ---- training ------------------------------------------------------------------------------

def test_training_lowers_the_loss_and_captions_unseen_images(trained, scenes):
    out, summary = trained
    valid = [e["loss"] for e in map(json.loads, (out / "metrics.jsonl").read_text()
                                    .splitlines()) if e["split"] == "valid"]
    assert summary["valid"]["loss"] < 0.25 * valid[0]
    assert summary["valid"]["bleu"] > 80                     # greedy, on the valid images
    for beam in (1, 3):
        captions = cap.caption_images(out, _images(scenes, "valid"), beam=beam)
        assert all(c.startswith(("a ", "the ")) for c in captions), captions
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "captioner" and config["image_size"] == SIZE
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()


def test_resume_is_bit_exact(scenes, tmp_path):
    data = _data(scenes, batch_size=16)          # 3 steps an epoch: resume mid-epoch
    model = {**MODEL, "dropout": 0.2}
    cap.train_captioner(data, model, _train_cfg(max_steps=8, log_every=1), tmp_path / "a",
                        log=_quiet)
    cap.train_captioner(data, model, _train_cfg(max_steps=4, log_every=1), tmp_path / "b",
                        log=_quiet)
    cap.train_captioner(None, None, None, tmp_path / "b", resume=True,
                        train_overrides={"max_steps": 8}, log=_quiet)
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert [s for s, _ in a] == list(range(1, 9)) and a == b      # same floats, bit for bit
    state_a, meta_a = load_tensors(tmp_path / "a" / "train_state.safetensors")
    state_b, meta_b = load_tensors(tmp_path / "b" / "train_state.safetensors")
    assert state_a.keys() == state_b.keys() and any("running_mean" in k for k in state_a)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert meta_a["step"] == meta_b["step"] == 8
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()


# ---- padded batches against each caption alone -----------------------------------------------

def _valid_set(out, scenes):
    model, tokenizer, config = cap.load_captioner(out)
    data = cap.caption_set(str(scenes / "valid.tsv"), "", tokenizer, image_size=SIZE,
                           features="", lowercase=False)
    return model, tokenizer, data


def test_padded_batch_equals_each_caption_alone(trained, scenes):
    out, _ = trained
    model, _, data = _valid_set(out, scenes)
    assert len({len(t) for t in data.ids}) > 1                  # captions of several lengths
    total, count = cap.teacher_forced_nll(model, data, "cpu", batch_size=64)
    alone = [cap.teacher_forced_nll(model, data, "cpu", [k]) for k in range(len(data.ids))]
    assert count == sum(n for _, n in alone) == sum(len(t) for t in data.ids)
    assert total == pytest.approx(sum(t for t, _ in alone), rel=1e-6)
    with torch.no_grad():                                       # logits, caption by caption
        inputs, tgt_in, _ = cap.collate_captions(data, list(range(len(data.ids))))
        batched = model(inputs, tgt_in)
        for k, ids in enumerate(data.ids):
            own = model(inputs[k:k + 1], tgt_in[:len(ids), k:k + 1])
            torch.testing.assert_close(batched[:len(ids), k:k + 1], own, rtol=1e-5,
                                       atol=1e-5)


def test_greedy_captions_in_a_batch_equal_each_alone_and_beam_one(trained, scenes):
    model, tokenizer, data = _valid_set(trained[0], scenes)
    together = cap.caption_inputs(model, data.inputs, tokenizer, beam=1)
    alone = [cap.caption_inputs(model, data.inputs[k:k + 1], tokenizer, beam=1)[0]
             for k in range(len(data.inputs))]
    assert together == alone
    from rnnkit.generate import beam_search
    for k, text in enumerate(together):
        search = TranslationSearch(model, encoded=model.encode(data.inputs[k:k + 1]))
        (ids, _), = beam_search(search, [BOS_ID], beam_size=1, max_tokens=50, eos_id=EOS_ID)
        assert tokenizer.decode(ids[:-1] if ids[-1] == EOS_ID else ids).strip() == text


# ---- evaluation and captioning ---------------------------------------------------------------

def test_bleu_has_every_caption_of_an_image_as_reference():
    import sacrebleu

    hyps = ["a red square on the left", "a blue square"]
    refs = [["a red square on the left", "the left has a red square"],
            ["a blue square on the right"]]
    got = cap.bleu(hyps, refs)
    streams = [["a red square on the left", "a blue square on the right"],
               ["the left has a red square", None]]
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
    assert "nrefs:var" in got["signature"] and 0 < got["bleu"] < 100


def test_cli_eval_reports_bleu_and_caption_draws_attention(trained, scenes, tmp_path, capsys):
    out, _ = trained
    code, text, err = run_cli(["eval", out, "--data", scenes / "valid.tsv", "--beam", "2",
                               "--json"], capsys)
    assert code == 0, err
    m = json.loads(text)
    assert (m["images"], m["captions"], m["beam"]) == (6, 12, 2) and m["bleu"] > 50
    model, tokenizer, data = _valid_set(out, scenes)
    total, count = cap.teacher_forced_nll(model, data, "cpu")
    assert m["loss"] == pytest.approx(total / count)
    images = _images(scenes, "valid")[:2]
    code, text, err = run_cli(["caption", out, *images, "--beam", "1", "--attention",
                               tmp_path / "att"], capsys)
    assert code == 0, err
    lines = text.splitlines()
    assert [x.split("\t")[0] for x in lines] == images
    assert [x.split("\t")[1] for x in lines] == cap.caption_images(out, images, beam=1)
    for image in images:
        png = tmp_path / "att" / (image.rsplit("/", 1)[-1])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    twin = tmp_path / "elsewhere" / Path(images[0]).name          # another image, same name
    twin.parent.mkdir()
    twin.write_bytes(Path(images[1]).read_bytes())
    code, _, err = run_cli(["caption", out, images[0], twin, "--beam", "1", "--attention",
                            tmp_path / "twins"], capsys)
    stem = Path(images[0]).stem
    assert code == 0 and sorted(p.name for p in (tmp_path / "twins").iterdir()) == \
        [f"{stem}-2.png", f"{stem}.png"], err


def test_attention_maps_cover_the_image_for_each_word(trained, scenes):
    out, _ = trained
    model, tokenizer, config = cap.load_captioner(out)
    image = load_image(_images(scenes, "valid")[0], SIZE)[None]
    ids, maps = cap.attention_maps(model, image, None)
    assert maps.shape == (len(ids) + 1, SIZE // 4, SIZE // 4)           # words and <eos>
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(len(maps)))


# ---- precomputed features ---------------------------------------------------------------------

def _write_features(scenes, path, shape=(4, 4, 3)):
    """Each image's pixels pooled to a 4×4 grid of RGB: (h, w, D) features per image."""
    tensors = {}
    for split in ("train", "valid"):
        for c in read_captions(scenes / f"{split}.tsv"):
            pooled = torch.nn.functional.avg_pool2d(load_image(c.path, SIZE).float()[None], 4)
            tensors[c.name] = (pooled[0].permute(1, 2, 0) / 255).reshape(shape).contiguous()
    save_file(tensors, str(path))


def test_features_from_a_file_train_caption_and_draw(scenes, tmp_path):
    features = tmp_path / "features.safetensors"
    _write_features(scenes, features)
    out = tmp_path / "m"
    summary = cap.train_captioner(_data(scenes, features=str(features)), MODEL,
                                  _train_cfg(max_steps=10), out, log=_quiet)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["feature_size"] == 3 and config["grid"] == [4, 4]
    assert "cnn.0.weight" not in load_tensors(out / "model.safetensors")[0]
    assert math.isfinite(summary["valid"]["loss"])
    assert summary["valid"]["bleu"] == pytest.approx(                # the finish's greedy BLEU
        cap.evaluate_file(out, scenes / "valid.tsv", beam=1)["bleu"])
    images = _images(scenes, "valid")[:2]
    assert len(cap.caption_images(out, images, beam=2)) == 2          # found by file name
    text = cap.plot_attention(out, images[0], tmp_path / "a.png")
    assert (tmp_path / "a.png").is_file() and text == cap.caption_images(out, images[:1],
                                                                        beam=1)[0]


@pytest.mark.parametrize("shape", [(2, 2, 3), (5, 3), (3,)])
def test_features_of_any_shape_are_read_as_positions(scenes, tmp_path, shape):
    features = tmp_path / "f.safetensors"
    save_file({c.name: torch.rand(shape) for c in read_captions(scenes / "valid.tsv")},
              str(features))
    names = [c.name for c in read_captions(scenes / "valid.tsv")][:3]
    got = read_features(features, names)
    positions = math.prod(shape[:-1])                   # 1 for a single vector
    assert got.shape == (3, positions, shape[-1])
    stored = load_file(str(features))
    assert torch.equal(got[1], stored[names[1]].reshape(positions, shape[-1]))


def test_bad_feature_files_are_refused_naming_the_file(scenes, tmp_path, capsys):
    names = [c.name for split in ("train", "valid")
             for c in read_captions(scenes / f"{split}.tsv")]
    cases = {
        "shapes.safetensors": ({n: torch.zeros(2 + (k == 3), 3) for k, n in enumerate(names)},
                               "expected one shape for all"),
        "ints.safetensors": ({n: torch.zeros(2, 3, dtype=torch.int64) for n in names},
                             "expected floats"),
        "missing.safetensors": ({n: torch.zeros(2, 3) for n in names if n != "train0.png"},
                                "train.tsv, line 1: no features of 'train0.png'"),
        "nan.safetensors": ({n: torch.full((2, 3), float("nan")) for n in names},
                            "not finite"),
    }
    for name, (tensors, fragment) in cases.items():
        save_file(tensors, str(tmp_path / name))
        out = tmp_path / f"m-{name}"
        expect_cli_error(["train", "captioner", "--data", scenes, "--features",
                          tmp_path / name, "--out", out, "--max-steps", "1"], capsys, fragment)
        assert not out.exists()
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    expect_cli_error(["train", "captioner", "--data", scenes, "--features",
                      tmp_path / "junk.safetensors", "--out", tmp_path / "j"], capsys,
                     "junk.safetensors")


# ---- bad input ----------------------------------------------------------------------------------

def _copy_scenes(scenes, folder):
    folder.mkdir()
    for f in scenes.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_an_image_that_does_not_decode_is_named_and_nothing_is_written(scenes, tmp_path,
                                                                        capsys):
    folder = _copy_scenes(scenes, tmp_path / "d")
    (folder / "valid3.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "runs" / "m"
    expect_cli_error(["train", "captioner", "--data", folder, "--image-size", SIZE, "--out",
                      out, "--max-steps", "1"], capsys, "valid3.png",
                     "not an image Pillow can decode")
    assert not (tmp_path / "runs").exists()


def test_captions_naming_a_missing_image_name_file_and_line(scenes, tmp_path, capsys):
    folder = _copy_scenes(scenes, tmp_path / "d")
    lines = (folder / "train.tsv").read_text().splitlines()
    lines[4] = "nowhere.png\ta red square on the left"
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "m"
    out.mkdir()
    before = snapshot(out)
    expect_cli_error(["train", "captioner", "--data", folder, "--out", out], capsys,
                     "train.tsv, line 5: image 'nowhere.png' not found")
    assert snapshot(out) == before
    expect_cli_error(["caption", trained_dir(tmp_path, scenes), folder / "missing.png"],
                     capsys, "missing.png: no such image file")


def trained_dir(tmp_path, scenes):
    """A one-step model (for the command that uses one)."""
    out = tmp_path / "one-step"
    if not out.exists():
        cap.train_captioner(_data(scenes), MODEL, _train_cfg(max_steps=1), out, log=_quiet)
    return out


def test_image_size_too_small_for_the_network_is_refused(scenes, tmp_path, capsys):
    expect_cli_error(["train", "captioner", "--data", scenes, "--image-size", "4",
                      "--conv-layers", "3", "--out", tmp_path / "m"], capsys,
                     "image_size", "at least 8")
    assert not (tmp_path / "m").exists()


def test_images_that_would_not_fit_in_memory_are_refused_before_decoding(scenes, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(cap, "MAX_IMAGE_BYTES", 24 * 3 * SIZE ** 2 - 1)     # 24 images
    with pytest.raises(ValueError, match=r"train\.tsv: 24 images of 16x16 pixels .* "
                                         r"--image-size, or --features"):
        cap.train_captioner(_data(scenes), MODEL, _train_cfg(max_steps=1), tmp_path / "m",
                            log=_quiet)
    assert not (tmp_path / "m").exists()


def test_a_model_of_features_refuses_features_of_another_size(scenes, tmp_path, capsys):
    features = tmp_path / "f.safetensors"
    _write_features(scenes, features)
    out = tmp_path / "m"
    cap.train_captioner(_data(scenes, features=str(features)), MODEL,
                        _train_cfg(max_steps=1), out, log=_quiet)
    names = [c.name for c in read_captions(scenes / "valid.tsv")]
    save_file({n: torch.zeros(4, 4, 5) for n in names}, str(tmp_path / "other.safetensors"))
    expect_cli_error(["caption", out, names[0], "--features", tmp_path / "other.safetensors"],
                     capsys, "features of size 5, but the model reads 3")
