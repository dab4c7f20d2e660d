"""The cell registry: the one list of cells, what each entry declares, user cells, errors.

Also a structural check that the rest of the package never asks for a cell by name.
"""

import re
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.cells import (REGISTRY, Cell, all_options, cell_names, cell_options_of,
                          make_cell, torch_twin)
from rnnkit.models.lm import LanguageModel, LMConfig

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ISSUE_NAMES = ["lstm", "lstm_peephole", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu",
               "rnn_sigmoid", "irnn"]


def test_the_named_variants_are_registered():
    assert set(ISSUE_NAMES) <= set(cell_names())


@pytest.mark.parametrize("name", cell_names())
def test_every_entry_builds_a_cell_with_its_declarations(name):
    cell = make_cell(name)
    assert isinstance(cell, Cell)
    assert cell.num_states == len(cell.state_names) >= 1
    state = cell.initial_state(3, 5, dtype=torch.float64)
    assert len(state) == cell.num_states and all(s.shape == (3, 5) for s in state)
    for key, default in REGISTRY[name].options.items():
        assert key in all_options()
        assert make_cell(name, **{key: default}).name == cell.name   # the default is the default


@pytest.mark.parametrize(("name", "twin"), [("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU),
                                            ("rnn_tanh", torch.nn.RNN), ("irnn", torch.nn.RNN)])
def test_standard_cells_name_their_torch_twin(name, twin):
    assert torch_twin(make_cell(name))[0] is twin


@pytest.mark.parametrize("name", ["lstm_peephole", "gru_reset_before", "rnn_sigmoid"])
def test_other_cells_have_no_twin(name):
    assert torch_twin(make_cell(name)) is None


def test_options_select_the_same_cells_as_the_named_variants():
    assert make_cell("lstm", peephole=True).name == "lstm_peephole"
    assert make_cell("gru", reset_before=True).name == "gru_reset_before"
    assert make_cell("rnn", nonlinearity="relu").name == "rnn_relu"
    assert cell_options_of("gru", {"reset_before": False, "peephole": True}) == {}
    assert cell_options_of("lstm", {"peephole": True}) == {"peephole": True}


def test_option_values_are_checked():
    with pytest.raises(ValueError, match=r"peephole: expected true or false for cell 'lstm', "
                                         r"got 'yes'"):
        make_cell("lstm", peephole="yes")


def test_user_cell_by_path_in_a_layer_and_a_language_model():
    from examples.gated_cell import GatedCell

    layer = rnnkit.RecurrentStack(3, 4, cell="examples.gated_cell:GatedCell")
    assert type(layer.cell) is GatedCell
    model = LanguageModel(LMConfig(vocab_size=7, cell="examples.gated_cell:GatedCell",
                                   hidden_size=4, num_layers=1))
    hidden, _ = model(torch.randint(0, 7, (5, 2)))
    assert hidden.shape == (5, 2, 4)


def test_config_json_of_rnnkit_0_1_loads_with_its_cell_options():
    old = {"vocab_size": 10, "cell": "gru", "nonlinearity": "tanh", "peephole": False,
           "reset_after": False}
    config = LMConfig.from_dict(old)
    assert (config.cell, config.cell_options) == ("gru", {"reset_before": True})
    assert LanguageModel(config).layers[0].cell.name == "gru_reset_before"


def test_model_config_names_the_cell_and_the_option():
    with pytest.raises(ValueError, match=r"cell 'gru' takes no option 'peephole'"):
        LMConfig(vocab_size=10, cell="gru", cell_options={"peephole": True})
    with pytest.raises(ValueError, match=r"cell: unknown 'lstmm'; expected one of"):
        LMConfig(vocab_size=10, cell="lstmm")


def test_no_code_outside_cells_branches_on_a_cell_name():
    """`cell == "lstm"`, `config.cell in (...)`: such questions belong to the registry."""
    pattern = re.compile(r"""\bcell\w*\s*(==|!=|\bin\b|\bnot in\b)\s*["'(\[{]""")
    offenders = []
    for path in (ROOT / "rnnkit").rglob("*.py"):
        if path.parent.name == "cells":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_loading_never_imports_a_module_a_model_file_names(tmp_path, monkeypatch):
    from rnnkit.cells.registry import TRUST_ENV, named_by_file

    (tmp_path / "planted_cell_mod.py").write_text(
        "raise RuntimeError('this module ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with named_by_file(tmp_path / "config.json"), pytest.raises(
            ValueError, match=rf"rnnkit never imports a module that a model file names; "
                              rf"import planted_cell_mod in your program first, or set "
                              rf"{TRUST_ENV}=1"):
        make_cell("planted_cell_mod:Cell")
    import examples.gated_cell  # noqa: F401  (imported by the program: allowed)
    with named_by_file(tmp_path / "config.json"):
        assert make_cell("examples.gated_cell:GatedCell").name == "gated"
    monkeypatch.setenv(TRUST_ENV, "1")
    with named_by_file(tmp_path / "config.json"), pytest.raises(
            ValueError, match="cannot import 'planted_cell_mod' .RuntimeError: this module ran"):
        make_cell("planted_cell_mod:Cell")


def test_a_user_cell_whose_constructor_fails_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cell 'examples.gated_cell:GatedCell': cannot build "
                                         r"it with options \{'width': 3\} \(TypeError"):
        make_cell("examples.gated_cell:GatedCell", width=3)


def test_config_json_with_cell_options_not_a_table_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cell_options: expected (dict|a table of options), got 5"):
        LMConfig.from_dict({"vocab_size": 10, "cell": "gru", "reset_after": False,
                            "cell_options": 5})
