"""The pretrained text transformer (packaged all-MiniLM-L6-v2) and GloVe initialisation."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from selhn.config.schema import load_config
from selhn.data.batch import pad_tokens
from selhn.data.glove import glove_table, init_from_glove
from selhn.data.vocab import Vocabulary
from selhn.models import create_model
from selhn.models.registry import model_class
from selhn.models.text import BiGRUTextEncoder
from selhn.models.transformer import TransformerTextEncoder, WordPieceTokenizer, default_text_model
from selhn.training.objective import TrainingObjective, make_loss

CAPTIONS = ["a red seven next to a blue two", "a cat", "the handwritten digits 4 and 9 in cyan ink"]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    model = TransformerTextEncoder(default_text_model(), embed_size=16)
    model.load_pretrained()
    return model.eval()


def test_the_encoder_is_the_pretrained_transformer_then_linear_gpo_and_norm(encoder):
    tokenizer = WordPieceTokenizer(default_text_model())
    reference = AutoModel.from_pretrained(default_text_model()).eval()
    hf = AutoTokenizer.from_pretrained(default_text_model())
    ids = [tokenizer.encode(c) for c in CAPTIONS]
    tokens, lengths = pad_tokens(ids)
    with torch.no_grad():
        batch = encoder(tokens, lengths)
        for row, caption in enumerate(CAPTIONS):
            full = hf(caption, return_tensors="pt")["input_ids"]  # [CLS] pieces [SEP]
            assert full[0, 1:-1].tolist() == ids[row]
            hidden = reference(input_ids=full).last_hidden_state
            pooled = encoder.pool(encoder.fc(hidden), torch.tensor([full.shape[1]]))
            expected = torch.nn.functional.normalize(pooled, dim=-1)[0]
            torch.testing.assert_close(batch[row], expected, atol=1e-5, rtol=1e-5)


def test_tokenizer_mask_id_and_length(encoder):
    tokenizer = WordPieceTokenizer(default_text_model())
    assert tokenizer.mask_id == tokenizer.tokenizer.token_to_id("[MASK]") == 103
    assert len(tokenizer) == encoder.transformer.config.vocab_size
    with pytest.raises(FileNotFoundError, match=r"config\.json: not found"):
        WordPieceTokenizer("/nonexistent")


def test_glove_vectors_initialise_the_known_words():
    vocab = Vocabulary.build(["a cat and a zzqxv"])
    encoder = BiGRUTextEncoder(len(vocab), word_dim=50, embed_size=8)
    before = encoder.embed.weight.detach().clone()
    assert init_from_glove(encoder.embed, vocab) == 3  # a, cat, and
    rows, vectors = glove_table()
    for word in ("a", "cat", "and"):
        expected = torch.from_numpy(np.array(vectors[rows[word]]))
        assert torch.equal(encoder.embed.weight[vocab(word)], expected)
    assert torch.equal(encoder.embed.weight[vocab("zzqxv")], before[vocab("zzqxv")])
    with pytest.raises(ValueError, match=r"set model\.word_dim=50"):
        init_from_glove(BiGRUTextEncoder(len(vocab), word_dim=300, embed_size=8).embed, vocab)


def new_model(config, captions):
    """A new model and its vocabulary, sized as the trainer sizes one (16-d regions)."""
    cls = model_class(config.model.architecture)
    vocab = cls.make_vocabulary(config.model, captions, None, 1)
    return create_model(replace(config.model, vocab_size=len(vocab), img_dim=16)), vocab


def test_a_new_run_starts_from_glove():
    config = load_config(
        None, {"model.word_vectors": "glove", "model.word_dim": 50, "model.embed_size": 8}
    )
    model, vocab = new_model(config, ["a cat", "a zzqxv"])
    messages = model.load_pretrained(vocab)
    rows, vectors = glove_table()
    expected = torch.from_numpy(np.array(vectors[rows["cat"]]))
    assert torch.equal(model.text_encoder.embed.weight[vocab("cat")], expected)
    assert f"initialised 2 of {len(vocab)} words" in messages[0]  # a, cat


def test_the_transformer_trains_at_a_tenth_of_the_learning_rate():
    config = load_config(None, {"model.text_encoder": "transformer", "model.embed_size": 8})
    model, _ = new_model(config, [])
    objective = TrainingObjective(model, {"infonce": make_loss("infonce")})
    groups = objective.param_groups(model, config.train.pretrained_lr_scale, 0.01, 2.0)
    transformer = {id(p) for p in model.text_encoder.transformer.parameters()}
    assert {id(p) for p in groups[1]["params"]} == transformer and groups[1]["lr_scale"] == 0.1
    assert not transformer & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(transformer) == len(list(model.parameters()))
    assert groups[2]["weight_decay"] == 0.0  # the InfoNCE temperature


def test_loading_the_pretrained_weights_prints_nothing(capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as a fresh process has it
    model = TransformerTextEncoder(default_text_model(), embed_size=8)
    capfd.readouterr()
    model.load_pretrained()
    out, err = capfd.readouterr()
    assert out == "" and "Loading" not in err and "%" not in err


HARD_TEXTS = [
    *CAPTIONS,
    "Café crème brûlée, naïve ÀÉÎ",
    "北京 大学 and 東京",
    "emoji 🐶🏖️ dogs!! don't stop-believing, 3.14 e-mail@x.com",
    "\u200bzero\u200dwidth [MASK] [CLS] hello [SEP]",
    "seven " * 80,
    "",
]


def test_the_tokenizer_reads_text_as_transformers_does():
    """selhn runs the fast tokenizer without ``transformers``: the same pieces, decoded text,
    unknown words and special ids as ``AutoTokenizer``."""
    hf = AutoTokenizer.from_pretrained(default_text_model())
    tokenizer = WordPieceTokenizer(default_text_model(), max_pieces=8)
    assert len(tokenizer) == len(hf) and tokenizer.mask_id == hf.mask_token_id
    assert tokenizer.boundary_ids() == (hf.cls_token_id, hf.sep_token_id)
    for text in HARD_TEXTS:
        pieces = hf.encode(text, add_special_tokens=False)
        assert tokenizer.encode(text) == (pieces[:8] or [hf.unk_token_id]), text
        assert tokenizer.unread_text(text) == hf.decode(pieces[8:]).strip(), text
        unknown = [w for w in text.split() if hf.unk_token in hf.tokenize(w)]
        assert tokenizer.unknown_words(text) == unknown, text


def test_the_frozen_sentence_model_computes_what_transformers_computes():
    """``PlainBert`` (the sentence encoder's frozen BERT) against ``transformers``' BertModel on
    the same weights: the same parameter names and token features (to float rounding)."""
    from selhn.models.bert import PlainBert, plain_bert_config
    from selhn.models.transformer import with_boundaries

    reference = AutoModel.from_pretrained(default_text_model()).eval()
    plain = PlainBert(plain_bert_config(Path(default_text_model()))).eval()
    own = {k: v for k, v in reference.state_dict().items() if not k.startswith("pooler.")}
    plain.load_state_dict(own)  # strict: every name the same
    tokenizer = WordPieceTokenizer(default_text_model())
    tokens, lengths = pad_tokens([tokenizer.encode(text) for text in HARD_TEXTS])
    ids, mask = with_boundaries(tokens, lengths, *tokenizer.boundary_ids())
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        found = plain(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(found[mask], expected[mask], rtol=0, atol=1e-5)
