"""The special tokens at the start of every rnnkit vocabulary, shared by data and models.

=========  ===========  =======================================================
id         token        meaning
=========  ===========  =======================================================
0          ``<pad>``    padding; never a real token (embedding row kept at zero)
1          ``<unk>``    a token the vocabulary lacks
2          ``<eos>``    the line end (``"\\n"`` at char level); it also begins and
                        ends a target sentence in translation
=========  ===========  =======================================================

The tokenizers (``rnnkit.data.tokenizers``) build their vocabularies in this order; the
models use the ids without depending on the data layer. This module depends on nothing.
"""

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
PAD_ID, UNK_ID, LINE_END_ID = 0, 1, 2
