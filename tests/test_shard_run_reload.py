"""A run on pre-tokenised ``*.npy`` shards reloads from its run folder alone: its ``config.yaml``
records the vocabulary the model had (``data.tokenizer: none`` and the size a ``vocab_size.json``
stated, here 11: below BPE's 257, which the key refused), and ``catapult spectrum`` / ``train`` /
``critical-lr`` read the shards as ``train-ddp`` did. The truths: real ``.npy`` files written with
``np.save``, the trained model's own logits (bit for bit on the CPU), a dense float64 Hessian of
the trained model on batch 0 re-derived from the raw arrays with NumPy, and the saved state's shapes.
A config.yaml and a model.pt (or shards) of different vocabularies are refused with exit code 2
naming ``data.vocab_size`` and the file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from catapult import config as cfg
from catapult.cli import main
from catapult.data.text_shards import VOCAB_FILE, stated_vocab_size

from dense_curvature import dense_hessian

VOCAB, CONTEXT, BATCH = 11, 4, 4


def _config(root):
    return dict(name="tiny", seed=0, dtype="float64", data=dict(name="text", root=str(root), context=CONTEXT, n_test=2),
                model=dict(name="gpt", width=8, depth=1, n_heads=2), loss="cross_entropy",
                optimizer=dict(name="adam", lr=1e-2), train=dict(steps=3, batch_size=BATCH),
                eval=dict(sharpness_every=0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(shards folder, run folder, the trained model)``: train-ddp in one process."""
    from catapult.engine.distributed import train_ddp

    tmp = tmp_path_factory.mktemp("shard_run")
    root = tmp / "shards"
    root.mkdir()
    rng = np.random.default_rng(3)
    np.save(root / "part0.npy", rng.integers(0, VOCAB, 200).astype(np.uint16))
    np.save(root / "part1.npy", rng.integers(0, VOCAB, 150).astype(np.uint16))
    np.save(root / "part.valid.npy", rng.integers(0, VOCAB, 40).astype(np.uint16))
    (root / VOCAB_FILE).write_text(json.dumps({"vocab_size": VOCAB}))
    run = tmp / "run"
    result = train_ddp(_config(root), out_dir=run)
    assert result.summary["steps_completed"] == 3
    return root, run, result.model


def _copy(run, tmp_path, **data):
    """A copy of the run folder whose config.yaml has ``data`` changed."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_bytes((run / "model.pt").read_bytes())
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update(data)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out


def _batch0(root) -> tuple[torch.Tensor, torch.Tensor]:
    """train-ddp's batch 0 from the raw arrays: the training shards in name order as one stream,
    window starts drawn by torch.randint from the data seed (engine.distributed's docstring)."""
    from catapult.engine.seeds import seeds

    stream = np.concatenate([np.load(root / "part0.npy"), np.load(root / "part1.npy")]).astype(np.int64)
    gen = torch.Generator().manual_seed(seeds(0)[1] * 1_000_003)
    starts = torch.randint(len(stream) - CONTEXT, (BATCH,), generator=gen).numpy()
    windows = torch.from_numpy(np.stack([stream[s:s + CONTEXT + 1] for s in starts]))
    return windows[:, :-1], windows[:, 1:]


def test_the_run_folder_records_the_shards_vocabulary_and_validates(trained):
    _, run, model = trained
    recorded = cfg.read_mapping(run / "config.yaml")
    assert (recorded["data"]["tokenizer"], recorded["data"]["vocab_size"]) == ("none", VOCAB)   # was char, 4096
    assert cfg.validate(recorded)["data"]["vocab_size"] == VOCAB
    state = torch.load(run / "model.pt", weights_only=True)
    assert state["wte.weight"].shape[0] == VOCAB == model.wte.num_embeddings


def test_the_reloaded_model_gives_the_trained_logits_bit_for_bit(trained):
    from catapult.engine import build_run
    from catapult.engine.spectrum_study import load_weights

    root, run, model = trained
    setup = build_run(cfg.read_mapping(run / "config.yaml"))   # the run folder alone
    load_weights(setup.model, run / "model.pt")
    x, _ = _batch0(root)
    assert torch.equal(setup.batches.batch(0)[0], x)
    setup.model.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(setup.model(x), model(x))


def test_spectrum_reads_the_run_folder_and_measures_the_trained_model(trained, capsys):
    from catapult.losses import get_loss

    root, run, model = trained
    assert main(["spectrum", str(run / "config.yaml"), "--weights", str(run / "model.pt"), "--json", "--top-k", "1",
                 "--trace-matvecs", "0", "--density-runs", "0", "eval.sharpness_tol=1e-9",
                 "eval.sharpness_max_iter=400"]) == 0
    got = json.loads(capsys.readouterr().out)
    model.train()
    try:   # the CPU's fused attention has no double backward
        from torch.nn.attention import SDPBackend, sdpa_kernel
        math_only = sdpa_kernel([SDPBackend.MATH])
    except ImportError:   # torch 2.2: its older switch governs the CPU kernels too
        math_only = torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
    with math_only:
        hessian = dense_hessian(model, get_loss("cross_entropy"), _batch0(root))
    truth = float(torch.linalg.eigvalsh(hessian)[-1])
    assert got["eigenvalues"][0] == pytest.approx(truth, rel=1e-7)


def test_catapult_train_on_the_recorded_config_repeats_the_run(trained, tmp_path):
    _, run, _ = trained
    assert main(["train", str(run / "config.yaml"), "--out", str(tmp_path / "again"), "--progress", "none"]) == 0
    before, after = (torch.load(r / "model.pt", weights_only=True) for r in (run, tmp_path / "again"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (run / "metrics.csv").read_bytes() == (tmp_path / "again" / "metrics.csv").read_bytes()


def test_a_run_folder_written_before_the_size_was_recorded_still_reloads(trained, tmp_path, capsys):
    """Earlier versions recorded data.tokenizer char and the default 4096: the stated size is read."""
    _, run, _ = trained
    old = _copy(run, tmp_path, tokenizer="char", vocab_size=4096)
    assert main(["spectrum", str(old / "config.yaml"), "--weights", str(old / "model.pt"), "--top-k", "1",
                 "--trace-matvecs", "0", "--density-runs", "0"]) == 0
    assert f"batch 0 ({BATCH} samples" in capsys.readouterr().out


def test_a_config_yaml_edited_against_the_vocab_file_is_refused_naming_the_key_and_file(trained, tmp_path, capsys):
    root, run, _ = trained
    edited = _copy(run, tmp_path, vocab_size=100)
    assert main(["spectrum", str(edited / "config.yaml"), "--weights", str(edited / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert "data.vocab_size: 100" in err and str(root / VOCAB_FILE) in err and "states 11" in err
    assert "Traceback" not in err


def test_a_model_pt_of_another_vocabulary_is_refused_naming_the_key_and_file(trained, tmp_path, capsys):
    """Shards without a vocab_size.json, config.yaml saying 100 ids and model.pt holding 11 rows:
    the model's shape followed the config; was a shape mismatch naming --weights."""
    root, run, _ = trained
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in root.glob("*.npy"):
        (bare / f.name).write_bytes(f.read_bytes())
    edited = _copy(run, tmp_path, root=str(bare), vocab_size=100)
    assert main(["spectrum", str(edited / "config.yaml"), "--weights", str(edited / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert "data.vocab_size:" in err and str(edited / "model.pt") in err and "an embedding of 11" in err
    assert f"{edited / 'config.yaml'} says data.vocab_size: 100" in err and "Traceback" not in err


def test_shards_replaced_by_another_vocabulary_are_refused(trained, tmp_path, capsys):
    root, run, _ = trained
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "part0.npy", np.arange(300, dtype=np.uint16) % 20)
    (other / VOCAB_FILE).write_text(json.dumps({"vocab_size": 20}))
    edited = _copy(run, tmp_path, root=str(other))
    assert main(["spectrum", str(edited / "config.yaml"), "--weights", str(edited / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert "data.vocab_size: 11" in err and str(other / VOCAB_FILE) in err and "not the shards it trained on" in err


def test_the_tokenizer_none_sizes_and_its_refusals(tmp_path):
    ok = cfg.validate({"data": {"name": "text", "root": "s", "tokenizer": "none", "vocab_size": 65},
                       "model": {"name": "gpt"}})
    assert (ok["data"]["tokenizer"], ok["data"]["vocab_size"]) == ("none", 65)
    # the largest size a vocab_size.json may state is recorded, and validates again
    (tmp_path / VOCAB_FILE).write_text(json.dumps({"vocab_size": 2 ** 32}))
    assert cfg.validate({"data": {"name": "text", "root": "s", "tokenizer": "none",
                                  "vocab_size": stated_vocab_size(tmp_path)},
                         "model": {"name": "gpt"}})["data"]["vocab_size"] == 2 ** 32
    for data, key, words in [({"tokenizer": "bpe", "vocab_size": 65}, "data.vocab_size", ">= 257"),
                             ({"vocab_size": 65}, "data.vocab_size", "tokenizer: none"),
                             ({"tokenizer": "none", "name": "shakespeare", "root": None}, "data.tokenizer", "shakespeare"),
                             ({"tokenizer": "none", "cache_dir": "c"}, "data.cache_dir", "BPE option")]:
        with pytest.raises(cfg.ConfigError) as err:
            cfg.validate({"data": {"name": "text", "root": "s", **data}, "model": {"name": "gpt"}})
        assert err.value.keys == [key] and words in str(err.value), data


def test_a_sweep_of_a_shards_config_is_refused_naming_the_key(trained, tmp_path, capsys):
    _, run, _ = trained
    spec = cfg.read_mapping(run / "config.yaml")
    spec["sweep"] = {"grid": {"optimizer.lr": [1e-3, 2e-3]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--store", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err
    assert "data.tokenizer:" in err and "read as token shards" in err and not (tmp_path / "s.db").exists()


def test_a_text_shards_run_records_its_bpe_and_reloads(tmp_path, capsys):
    """*.jsonl shards are tokenised with a byte-level BPE whatever data.tokenizer said (char, the
    default, was recorded): config.yaml says bpe, and spectrum reads the run folder alone."""
    from catapult.engine.distributed import train_ddp

    root = tmp_path / "text"
    root.mkdir()
    (root / "a.jsonl").write_text("".join(json.dumps({"text": f"document {i}: some words, again."}) + "\n"
                                          for i in range(30)))
    config = dict(_config(root), train=dict(steps=1, batch_size=BATCH))
    config["data"].update(cache_dir=None, n_test=None)
    run = tmp_path / "run"
    model = train_ddp(config, out_dir=run).model
    recorded = cfg.validate(cfg.read_mapping(run / "config.yaml"))["data"]
    assert (recorded["tokenizer"], recorded["vocab_size"]) == ("bpe", 4096)   # was char: no BPE named
    (tokenizer,) = root.glob("bpe-v4096-*.json")
    assert model.wte.num_embeddings == len(json.loads(tokenizer.read_text())["model"]["vocab"]) < 4096
    assert main(["spectrum", str(run / "config.yaml"), "--weights", str(run / "model.pt"), "--top-k", "1",
                 "--trace-matvecs", "0", "--density-runs", "0"]) == 0
    assert f"batch 0 ({BATCH} samples" in capsys.readouterr().out


def test_reads_shards_lists_the_arrays_as_token_shards_reads_them(tmp_path):
    # (review) reads_shards took any '.npy' suffix, upper case too, while TokenShards reads
    # root.glob("*.npy"): a folder of X.NPY alone was sent to the shards path, which found none
    from catapult.engine.distributed import TokenShards
    from catapult.engine.shard_run import reads_shards

    np.save(tmp_path / "part0.npy", np.arange(10, dtype=np.uint16))
    (tmp_path / "part0.npy").rename(tmp_path / "PART0.NPY")
    assert not reads_shards({"name": "text", "root": str(tmp_path), "tokenizer": "char"})
    with pytest.raises(FileNotFoundError, match="no \\*.npy token shards"):
        TokenShards(tmp_path, 16)
    np.save(tmp_path / "part1.npy", np.arange(10, dtype=np.uint16))
    assert reads_shards({"name": "text", "root": str(tmp_path), "tokenizer": "char"})
    assert len(TokenShards(tmp_path, 16)) == 10


def test_reads_shards_of_a_file_root_a_text_shards_folder_and_other_data(tmp_path):
    # (mutation pass 19) a root that is one array file, of either suffix case, is shards as
    # TokenShards reads it (SR3 took 'X.NPY' for a corpus, SR4 any array file); a folder of *.jsonl
    # text shards alone is shards (SR6); data.name other than text never is, whatever its root holds (SR1)
    from catapult.engine.distributed import TokenShards
    from catapult.engine.shard_run import reads_shards

    def text(root, name="text"):
        return {"name": name, "root": str(root), "tokenizer": "char"}

    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "part0.npy", np.arange(10, dtype=np.uint16))
    upper = (arrays / "part0.npy").rename(arrays / "PART0.NPY")
    np.save(arrays / "part1.npy", np.arange(7, dtype=np.uint16))
    for f, n in ((upper, 10), (arrays / "part1.npy", 7)):
        assert reads_shards(text(f)) and len(TokenShards(f, 16)) == n
    assert not reads_shards(text(arrays, "shakespeare")) and not reads_shards(text(upper, "shakespeare"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text(json.dumps({"text": "some words"}) + "\n")
    assert reads_shards(text(docs)) and reads_shards(text(docs / "a.jsonl"))
    (docs / "corpus.txt").write_text("a corpus beside its shards stays a corpus")
    assert not reads_shards(text(docs))


def test_open_and_build_refuse_text_read_as_ids_and_shards_shorter_than_a_window(tmp_path):
    # (mutation pass 19) data.tokenizer none over *.jsonl text is refused naming data.tokenizer (SR9
    # tokenised the text anyway); shards of exactly data.context tokens hold no window of context + 1
    # (SR11 let them through to the batches)
    from catapult.engine.shard_run import build_shard_run, open_shards

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text(json.dumps({"text": "some words"}) + "\n")
    with pytest.raises(cfg.ConfigError) as err:
        open_shards(cfg.validate({"data": {"name": "text", "root": str(docs), "tokenizer": "none", "vocab_size": 300},
                                  "model": {"name": "gpt"}}))
    assert err.value.keys == ["data.tokenizer"] and "a.jsonl" in str(err.value)
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "part0.npy", np.arange(CONTEXT, dtype=np.uint16))
    config = cfg.validate(dict(_config(arrays), data=dict(name="text", root=str(arrays), context=CONTEXT,
                                                          tokenizer="none", vocab_size=VOCAB)))
    with pytest.raises(cfg.ConfigError) as err:
        build_shard_run(config, torch.device("cpu"))
    assert err.value.keys == ["data.root"] and f"{CONTEXT} training tokens" in str(err.value)


def test_a_vocab_size_out_of_a_tokenizers_bounds_is_one_problem_said_once():
    # (mutation pass 19) image data given a vocab_size below BPE's: one problem for the key (CF5 said it
    # twice, as a text-data option too); above BPE's bound no advice of fewer ids (CF4 gave it there too)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate({"data": {"name": "cifar10", "vocab_size": 65}})
    assert err.value.keys == ["data.vocab_size"] and "fewer ids" in str(err.value)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate({"data": {"name": "text", "root": "s", "tokenizer": "bpe", "vocab_size": 2 ** 21},
                      "model": {"name": "gpt"}})
    assert err.value.keys == ["data.vocab_size"] and "<= 1048576" in str(err.value)
    assert "fewer ids" not in str(err.value)
    with pytest.raises(cfg.ConfigError) as err:   # (CF9) with tokenizer none, any size from 1: 0 is none
        cfg.validate({"data": {"name": "text", "root": "s", "tokenizer": "none", "vocab_size": 0}, "model": {"name": "gpt"}})
    assert err.value.keys == ["data.vocab_size"]
