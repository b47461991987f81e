"""Checkpoints in and out: the dialects of real checkpoints, save -> transformers load, the Hub offline, and the
clear errors for files that are wrong."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import minibert
from minibert import MinibertError
from tests.fake_hub import FakeHub
from tests.reference import ATOL, TINY, assert_close_on_tokens, hf_model, padded_batch


def write_checkpoint(folder: Path, state: dict[str, torch.Tensor], config: dict, fmt: str = "safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        state = {k: v.contiguous() for k, v in state.items()}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.fixture
def pretraining_ref():
    """A BertForPreTraining (the class of the original bert-base-uncased checkpoint) with random weights."""
    return hf_model("BertForPreTraining", **TINY)


def base_outputs(model, mask_lengths=(7, 3)):
    ids, mask, types = padded_batch(TINY["vocab_size"], list(mask_lengths))
    with torch.no_grad():
        if isinstance(model, minibert.BertPreTrainedModel):
            return model(ids, mask, types), mask
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types), mask


def test_the_original_bert_checkpoint_layout(tmp_path, pretraining_ref):
    """TF-era names (LayerNorm.gamma/beta), the position_ids buffer and cls.* heads, as in bert-base-uncased's
    pytorch_model.bin: every class loads it, and the base model equals transformers' on it."""
    state = {}
    for name, tensor in pretraining_ref.state_dict().items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[name] = tensor
    state["bert.embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    folder = write_checkpoint(tmp_path / "orig", state, pretraining_ref.config.to_dict(), fmt="bin")

    ours = minibert.BertForPreTraining.from_pretrained(folder)
    ids, mask, types = padded_batch(TINY["vocab_size"], [7, 3])
    with torch.no_grad():
        got = ours(ids, mask, types)
        expected = pretraining_ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert_close_on_tokens(got.prediction_logits, expected.prediction_logits, mask)
    torch.testing.assert_close(got.seq_relationship_logits, expected.seq_relationship_logits, atol=ATOL, rtol=0)

    base = minibert.BertModel.from_pretrained(folder)
    got_base, _ = base_outputs(base)
    expected_base, mask = base_outputs(pretraining_ref.bert)
    assert_close_on_tokens(got_base.last_hidden_state, expected_base.last_hidden_state, mask)
    with torch.no_grad():
        mlm = minibert.BertForMaskedLM.from_pretrained(folder)(ids, mask, types).logits
        nsp = minibert.BertForNextSentencePrediction.from_pretrained(folder)(ids, mask, types).logits
    assert_close_on_tokens(mlm, expected.prediction_logits, mask)
    torch.testing.assert_close(nsp, expected.seq_relationship_logits, atol=ATOL, rtol=0)


def test_base_checkpoint_without_prefix_into_a_head_model(tmp_path, caplog):
    """A bare BertModel checkpoint (no "bert." prefix, like MiniLM) loads into a head model; the head is
    initialised and named in one line."""
    ref = hf_model("BertModel", **TINY)
    ref.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="minibert"):
        model = minibert.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=4)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # expected when fine-tuning: info only
    lines = [r.getMessage() for r in caplog.records if "newly initialised" in r.getMessage()]
    assert len(lines) == 1 and "classifier.weight" in lines[0] and "classifier.bias" in lines[0]
    assert model.classifier.weight.shape == (4, TINY["hidden_size"])
    got, mask = base_outputs(model.bert)
    expected, _ = base_outputs(ref)
    assert_close_on_tokens(got.last_hidden_state, expected.last_hidden_state, mask)


def test_head_checkpoint_into_base_model(tmp_path, caplog):
    ref = hf_model("BertForSequenceClassification", **TINY)
    ref.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="minibert"):
        model = minibert.BertModel.from_pretrained(tmp_path)
    assert any("classifier is not used" in r.getMessage() for r in caplog.records)
    got, mask = base_outputs(model)
    expected, _ = base_outputs(ref.bert)
    assert_close_on_tokens(got.last_hidden_state, expected.last_hidden_state, mask)


@pytest.mark.parametrize("name", ["BertModel", "BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForQuestionAnswering", "BertForMultipleChoice", "BertForNextSentencePrediction",
                                  "BertForMaskedLM", "BertForPreTraining"])
def test_save_then_transformers_loads_same_outputs(tmp_path, name):
    torch.manual_seed(0)
    num_labels = 2 if name == "BertForQuestionAnswering" else 3
    ours = getattr(minibert, name)(minibert.BertConfig(**TINY, num_labels=num_labels)).eval()
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    ours.save_pretrained(tmp_path)
    ref, info = getattr(transformers, name).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask, types = padded_batch(TINY["vocab_size"], [8, 8])
    if name == "BertForMultipleChoice":
        ids, mask, types = ids[None], mask[None], types[None]
    with torch.no_grad():
        got = ours(ids, mask, types)
        expected = ref.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types)
    for field in ("last_hidden_state", "logits", "start_logits", "prediction_logits", "seq_relationship_logits"):
        if hasattr(got, field):
            torch.testing.assert_close(getattr(got, field), getattr(expected, field), atol=ATOL, rtol=0)
    # and back: our own reload is bit-identical
    again = getattr(minibert, name).from_pretrained(tmp_path)
    for (n, a), (_, b) in zip(ours.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), n


def test_minilm_save_roundtrip_keeps_config(tmp_path, minilm_dir):
    model = minibert.BertModel.from_pretrained(minilm_dir)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    original = json.loads((minilm_dir / "config.json").read_text())
    for key, value in original.items():  # unknown fields (gradient_checkpointing, use_cache, ...) written back
        if key != "architectures":
            assert saved[key] == value, key
    assert saved["architectures"] == ["BertModel"]
    a = load_file(minilm_dir / "model.safetensors")
    b = load_file(tmp_path / "model.safetensors")
    assert set(b) == set(a) - {"embeddings.position_ids"}
    for key in b:
        assert torch.equal(a[key], b[key]), key


def test_sharded_safetensors(tmp_path):
    ref = hf_model("BertForMaskedLM", **TINY)
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours = minibert.BertForMaskedLM.from_pretrained(tmp_path)
    ids, mask, types = padded_batch(TINY["vocab_size"], [7, 3])
    with torch.no_grad():
        assert_close_on_tokens(ours(ids, mask, types).logits,
                               ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, mask)


def test_safetensors_preferred_over_bin(tmp_path, monkeypatch):
    """Both formats present: safetensors wins, and the .bin is never opened (here it is garbage)."""
    ref = hf_model("BertModel", **TINY)
    ref.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle at all")

    def no_torch_load(*args, **kwargs):
        raise AssertionError("pytorch_model.bin was opened although model.safetensors is there")

    monkeypatch.setattr(torch, "load", no_torch_load)
    got, mask = base_outputs(minibert.BertModel.from_pretrained(tmp_path))
    expected, _ = base_outputs(ref)
    assert_close_on_tokens(got.last_hidden_state, expected.last_hidden_state, mask)


# --- errors a user can make --------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path) -> Path:
    """A transformers BertForSequenceClassification checkpoint (base tensors under "bert.")."""
    folder = tmp_path / "model"
    hf_model("BertForSequenceClassification", **TINY).save_pretrained(folder)
    return folder


def test_missing_path(tmp_path):
    with pytest.raises(MinibertError, match="does not exist; check the path"):
        minibert.BertModel.from_pretrained(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MinibertError, match="has no model.safetensors"):
        minibert.BertModel.from_pretrained(tmp_path)


def test_folder_without_config(saved):
    (saved / "config.json").unlink()
    with pytest.raises(MinibertError, match="config.json does not exist"):
        minibert.BertModel.from_pretrained(saved)


def test_config_not_json(saved):
    (saved / "config.json").write_text("{'hidden_size': 8,}")
    with pytest.raises(MinibertError, match=r"config.json is not valid JSON \(line 1"):
        minibert.BertModel.from_pretrained(saved)


def test_truncated_safetensors(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MinibertError, match="not a valid safetensors file .* truncated or corrupt"):
        minibert.BertModel.from_pretrained(saved)


def test_safetensors_header_that_lies(saved):
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[:8] = (10**9).to_bytes(8, "little")  # header length far beyond the file
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(MinibertError, match="not a valid safetensors file"):
        minibert.BertModel.from_pretrained(saved)


@pytest.mark.parametrize("content,message", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:53aa\nsize 90868376\n", "Git LFS pointer"),
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML page"),
])
def test_impostor_weight_files(saved, content, message):
    (saved / "model.safetensors").write_bytes(content)
    with pytest.raises(MinibertError, match=message):
        minibert.BertModel.from_pretrained(saved)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    torch.save({"embeddings.word_embeddings.weight": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(MinibertError, match="refused"):
        minibert.BertModel.from_pretrained(folder)
    assert not marker.exists()


def test_config_that_does_not_fit_the_weights(saved):
    config = json.loads((saved / "config.json").read_text())
    config["vocab_size"] = 120
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(MinibertError, match=r"'bert.embeddings.word_embeddings.weight' has shape \(99, 32\) in the "
                                            r"checkpoint, but config.json's vocab_size=120 needs \(120, 32\); check"):
        minibert.BertModel.from_pretrained(saved)
    # a .bin has no header to check first: the loader names the tensor itself
    torch.save(load_file(saved / "model.safetensors"), saved / "pytorch_model.bin")
    (saved / "model.safetensors").unlink()
    with pytest.raises(MinibertError, match=r"'bert.embeddings.word_embeddings.weight' has shape \(99, 32\) in the "
                                            r"checkpoint but the model expects \(120, 32\); check that config.json"):
        minibert.BertModel.from_pretrained(saved)


def test_classifier_of_another_size(saved, caplog):
    with pytest.raises(MinibertError, match="'classifier.weight' has shape .*ignore_mismatched_sizes=True"):
        minibert.BertForSequenceClassification.from_pretrained(saved, num_labels=5)
    with caplog.at_level(logging.INFO, logger="minibert"):
        model = minibert.BertForSequenceClassification.from_pretrained(saved, num_labels=5,
                                                                      ignore_mismatched_sizes=True)
    assert model.classifier.weight.shape == (5, TINY["hidden_size"])
    assert "classifier.weight (size (2, 32) in the checkpoint, (5, 32) here)" in caplog.text


def test_unexpected_tensor_is_named(saved):
    state = load_file(saved / "model.safetensors")
    state["bert.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(3)
    save_file(state, saved / "model.safetensors")
    with pytest.raises(MinibertError, match="unexpected tensor 'bert.encoder.layer.0.attention.self.rotary.weight'"):
        minibert.BertModel.from_pretrained(saved)


def test_missing_layer_is_named(saved):
    config = json.loads((saved / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(MinibertError, match=r"num_hidden_layers=3 but the checkpoint has 2 layers \(no tensor "
                                            r"'encoder.layer.2.…', last 'bert.encoder.layer.1.output.dense.weight'\)"):
        minibert.BertModel.from_pretrained(saved)
    torch.save(load_file(saved / "model.safetensors"), saved / "pytorch_model.bin")
    (saved / "model.safetensors").unlink()
    with pytest.raises(MinibertError, match="no tensor 'encoder.layer.2.attention.self.query.weight'"):
        minibert.BertModel.from_pretrained(saved)


def test_nan_in_checkpoint_is_named(saved):
    state = load_file(saved / "model.safetensors")
    state["bert.encoder.layer.1.output.dense.weight"][0, 0] = float("nan")
    save_file(state, saved / "model.safetensors")
    with pytest.raises(MinibertError, match="'bert.encoder.layer.1.output.dense.weight' .* NaN or Inf"):
        minibert.BertModel.from_pretrained(saved)


def test_config_code_fields_are_ignored(saved, caplog):
    config = json.loads((saved / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (saved / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="minibert"):
        minibert.BertModel.from_pretrained(saved)
    assert "auto_map" in caplog.text and "never imports" in caplog.text


def test_loading_options(saved):
    model = minibert.BertModel.from_pretrained(saved, add_pooling_layer=False, dtype=torch.bfloat16,
                                               hidden_dropout_prob=0.2)
    assert model.pooler is None and model.config.hidden_dropout_prob == 0.2
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(MinibertError, match="unknown option"):
        minibert.BertForSequenceClassification.from_pretrained(saved, num_lables=3)


def test_save_is_atomic(saved, monkeypatch):
    """A crash in the middle of writing model.safetensors leaves the previous file intact, and no temp files."""
    before = (saved / "model.safetensors").read_bytes()
    model = minibert.BertForSequenceClassification.from_pretrained(saved)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("minibert.checkpoint_files.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(saved)
    assert (saved / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]


# --- the Hub (a local stand-in on 127.0.0.1: no network here) ------------------------------------------------------


LOAD = "import sys; from minibert import BertForSequenceClassification as M; M.from_pretrained(*sys.argv[1:2], " \
       "**dict(a.split('=') for a in sys.argv[2:]))"


def load_in_subprocess(hub_url: str, cache: Path, *args: str, offline: bool = False) -> subprocess.CompletedProcess:
    """huggingface_hub reads HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE at import: a fresh process sees them."""
    env = {**os.environ, "HF_ENDPOINT": hub_url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_OFFLINE": "1" if offline else "0"}
    script = LOAD + "; print('loaded')"
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=120)


def user_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


def test_hub_download_cache_offline_and_errors(tmp_path, saved):
    """Download from the Hub, then load from the cache offline; repo not found, revision not found and
    offline-not-cached are three distinct sentences."""
    cache = tmp_path / "cache"
    with FakeHub() as hub:
        hub.add("someone/tiny-bert", saved)
        hub.add("someone/tiny-bert", saved, revision="v1")
        ok = load_in_subprocess(hub.url, cache, "someone/tiny-bert")
        assert ok.stdout.strip() == "loaded", ok.stderr
        fetched = {r.split("/resolve/")[1].split("?")[0] for r in hub.requests}
        assert fetched == {"main/config.json", "main/model.safetensors"}  # only the files needed
        assert "loaded" in load_in_subprocess(hub.url, cache, "someone/tiny-bert", "revision=v1").stdout
        repo = user_error(load_in_subprocess(hub.url, cache, "someone/missing"))
        revision = user_error(load_in_subprocess(hub.url, cache, "someone/tiny-bert", "revision=v9"))
    offline = load_in_subprocess("http://127.0.0.1:9", cache, "someone/tiny-bert", offline=True)
    assert offline.stdout.strip() == "loaded", offline.stderr
    not_cached = user_error(load_in_subprocess("http://127.0.0.1:9", cache, "someone/other", offline=True))
    assert repo.endswith("model 'someone/missing' was not found on the Hub (or is private); check the id, or pass "
                         "a local folder.")
    assert "revision 'v9' of model 'someone/tiny-bert' does not exist on the Hub" in revision
    assert "model 'someone/other' is not in the local Hugging Face cache and the Hub cannot be reached (offline)" \
        in not_cached
    # the Hub unreachable without HF_HUB_OFFLINE: one probe, then the cache (no retries, no warnings); a model not in
    # the cache is one sentence that names HF_HUB_OFFLINE, within seconds instead of huggingface_hub's ~30 s of retries
    unreachable = load_in_subprocess("http://127.0.0.1:9", cache, "someone/tiny-bert")
    assert unreachable.stdout.strip() == "loaded" and "Retry" not in unreachable.stderr, unreachable.stderr
    started = time.monotonic()
    failed = load_in_subprocess("http://127.0.0.1:9", cache, "someone/other")
    assert time.monotonic() - started < 20 and "Retry" not in failed.stderr, failed.stderr
    assert user_error(failed).endswith("is not in the local Hugging Face cache and the Hub cannot be reached "
                                       "(offline); pass a local folder, or download it once with network access "
                                       "(HF_HUB_OFFLINE=1 skips the Hub and reads the cache).")


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("name", ["BertForMaskedLM", "BertForPreTraining"])
def test_mlm_decoder_tied_and_untied_load_and_save_like_transformers(tmp_path, name, tied):
    """tie_word_embeddings=False gives the MLM head its own decoder matrix: loaded from transformers' file, used
    in the logits, and written back so that transformers reloads it to the same logits."""
    ref = hf_model(name, tie_word_embeddings=tied, **TINY)
    decoder = ref.cls.predictions.decoder.weight
    assert (decoder is ref.bert.embeddings.word_embeddings.weight) == tied
    ref.save_pretrained(tmp_path / "hf")
    ours = getattr(minibert, name).from_pretrained(tmp_path / "hf")
    ids, mask, types = padded_batch(TINY["vocab_size"], [7, 3])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).prediction_logits \
            if name == "BertForPreTraining" else ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, mask, types)
    got = got.prediction_logits if name == "BertForPreTraining" else got.logits
    assert_close_on_tokens(got, expected, mask)
    assert (ours.mlm.decoder is None) == tied

    ours.save_pretrained(tmp_path / "ours")
    assert ("cls.predictions.decoder.weight" in load_file(tmp_path / "ours" / "model.safetensors")) == (not tied)
    again, info = getattr(transformers, name).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert again.config.tie_word_embeddings == tied
    torch.testing.assert_close(again.cls.predictions.decoder.weight, decoder, atol=0, rtol=0)
    with torch.no_grad():
        reloaded = again.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types)
    reloaded = reloaded.prediction_logits if name == "BertForPreTraining" else reloaded.logits
    assert_close_on_tokens(reloaded, expected, mask)


def test_untied_mlm_model_from_scratch_has_its_own_decoder():
    """Built from a config (no checkpoint), an untied head's decoder is a separate, trained parameter."""
    model = minibert.BertForMaskedLM(minibert.BertConfig(**TINY, tie_word_embeddings=False))
    names = {n for n, _ in model.named_parameters()}
    assert "mlm.decoder.weight" in names
    assert model.mlm.decoder.weight.data_ptr() != model.bert.embeddings.word.weight.data_ptr()
    ids, mask, _ = padded_batch(TINY["vocab_size"], [5])
    model(ids, mask).logits.sum().backward()
    assert model.mlm.decoder.weight.grad is not None and model.mlm.decoder.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("field, value, message", [
    ("num_hidden_layers", 10_000, r"num_hidden_layers=10000 but the checkpoint has 2 layers"),
    ("num_hidden_layers", 1, r"has tensor 'bert.encoder.layer.1.output.dense.weight' but config.json's "
                             r"num_hidden_layers=1"),
    ("hidden_size", 32_768, r"'bert.embeddings.word_embeddings.weight' has shape \(99, 32\) .* hidden_size=32768"),
    ("intermediate_size", 1_000_000, r"'bert.encoder.layer.0.intermediate.dense.weight' has shape \(37, 32\) .* "
                                     r"intermediate_size=1000000"),
    ("max_position_embeddings", 10_000_000, r"'bert.embeddings.position_embeddings.weight' .* "
                                            r"max_position_embeddings=10000000"),
])
def test_config_that_does_not_fit_is_refused_before_allocating(saved, monkeypatch, field, value, message):
    """The safetensors header is checked against config.json before the model is built: a config asking for
    10000 layers (about 70 GB at MiniLM's shapes) is refused at once, and no layer is ever allocated."""
    import time

    def no_layers(*args, **kwargs):
        raise AssertionError("an encoder layer was built before the config was checked against the weights")

    monkeypatch.setattr(minibert.encoder.EncoderLayer, "__init__", no_layers)
    config = json.loads((saved / "config.json").read_text())
    config[field] = value
    if field == "hidden_size":
        config["num_attention_heads"] = 1
    (saved / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(MinibertError, match=message):
        minibert.BertModel.from_pretrained(saved)
    assert time.perf_counter() - start < 0.5
