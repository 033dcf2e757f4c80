"""Embedding task: in-batch negatives that spare shared positives, retrieval metrics, grouped held-out
split, sentence-transformers round trip, predict (embeddings, pair scores, gallery) and a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import tunesmith
from tunesmith.config import load_config
from tunesmith.data.labelled import grouped_split, load_labelled
from tunesmith.errors import ConfigError, DataError
from tunesmith.report.ranking_metrics import retrieval_metrics
from tunesmith.tasks import get_task
from tunesmith.tasks._embedding import in_batch_negatives

TOPICS = {"fruit": ["apple", "pear", "plum"], "weather": ["rain", "storm", "snow"], "sea": ["ship", "wave", "sail"]}


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """A question of two words and a passage of four about the same topic (its words in a random order:
    18 distinct passages, so some repeat across rows)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        topic = str(rng.choice(list(TOPICS)))
        words = TOPICS[topic]
        rows.append({"anchor": " ".join(rng.choice(words, size=2)), "positive": f"{topic} " + " ".join(rng.permutation(words)),
                     "negative": f"{'sea' if topic != 'sea' else 'fruit'} talk"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_rows_that_share_a_positive_are_not_each_others_negatives():
    unit = torch.eye(3)
    anchors = unit[[0, 0, 1]]  # rows 0 and 1 ask about passage 0, row 2 about passage 1
    positives = unit[[0, 0, 1]]
    loss = in_batch_negatives([anchors, positives], torch.tensor([0, 0, 1]), scale=20.0)
    # Each row's only other candidate is an orthogonal passage: loss log(1 + e^-20) per row. Counting
    # row 1's copy of passage 0 as a negative of row 0 would give at least log 2.
    assert loss.item() == pytest.approx(math.log1p(math.exp(-20.0)), abs=1e-6)
    unmasked = in_batch_negatives([anchors, positives], torch.tensor([0, 1, 2]), scale=20.0)
    assert unmasked.item() > math.log(2) * 2 / 3 - 1e-6


def test_a_negative_column_adds_candidates():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = anchors.clone()
    negatives = torch.tensor([[0.9, 0.1], [0.0, -1.0]])  # row 0's negative is close to its anchor
    with_negatives = in_batch_negatives([anchors, positives, negatives], torch.tensor([0, 1]), scale=20.0)
    without = in_batch_negatives([anchors, positives], torch.tensor([0, 1]), scale=20.0)
    assert with_negatives > without


def test_retrieval_metrics_rank_ties_against_the_relevant_document():
    scores = np.array([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.1, 0.3, 0.2]])
    m = retrieval_metrics(scores, np.array([0, 0, 2]))  # ranks 1, 2 (tie), 2
    assert m["recall_at_1"] == pytest.approx(1 / 3) and m["recall_at_5"] == 1.0
    assert m["mrr_at_10"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["ndcg_at_10"] == pytest.approx((1 + 2 / math.log2(3)) / 3)
    assert m["mean_rank"] == pytest.approx(5 / 3)
    flat = retrieval_metrics(np.zeros((4, 4)), np.arange(4))
    assert flat["recall_at_1"] == 0.0 and flat["mean_rank"] == 4


def test_the_held_out_split_keeps_each_positive_on_one_side(tmp_path):
    rows = load_labelled(write_jsonl(tmp_path / "p.jsonl", pair_rows(60)), ["anchor", "positive"], None, "error")
    train, val = grouped_split(rows, rows.inputs["positive"], 0.3, seed=0)
    assert len(train) + len(val) == 60 and len(val) > 0
    assert not set(train.inputs["positive"]) & set(val.inputs["positive"])
    one = rows.subset([i for i, p in enumerate(rows.inputs["positive"]) if p == rows.inputs["positive"][0]])
    with pytest.raises(DataError, match="share one group"):
        grouped_split(one, one.inputs["positive"], 0.3, seed=0)


def test_triplet_needs_a_negative_column_and_a_missing_column_names_the_key(tiny_bert, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", pair_rows(20))
    with pytest.raises(ConfigError, match="embedding.negative_column"):
        load_config({"task": "embedding", "model": {"source": str(tiny_bert)}, "data": {"train": train},
                     "embedding": {"loss": "triplet"}})
    config = load_config({"task": "embedding", "model": {"source": str(tiny_bert)}, "data": {"train": train},
                          "embedding": {"anchor_column": "question"}})
    with pytest.raises(DataError, match=r"column 'question' not found.*embedding.anchor_column"):
        get_task(config).preflight()


def test_triplet_loss_trains_on_the_negative_column(tiny_bert, tmp_path):
    config = load_config({"task": "embedding", "model": {"source": str(tiny_bert)},
                          "data": {"train": write_jsonl(tmp_path / "t.jsonl", pair_rows(20))},
                          "embedding": {"loss": "triplet", "negative_column": "negative", "margin": 0.5}})
    task = get_task(config)
    task.preflight()
    model = task.build_model()
    batch = task.collate(task.dataset(task.train_rows, train=True)[:4])
    assert {"input_ids_2", "attention_mask_2"} <= set(batch)
    loss, outputs = task.loss(model, batch)
    assert outputs.shape[:2] == (4, 3) and torch.isfinite(loss) and loss.item() >= 0


def test_train_then_predict_embeddings_pair_scores_and_gallery_neighbours(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer

    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
           "data": {"train": write_jsonl(tmp_path / "t.jsonl", pair_rows(60))},
           "training": {"num_train_epochs": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 8}}
    result = tunesmith.finetune(raw, quiet=True)
    assert {"ndcg_at_10", "recall_at_1", "mrr_at_10"} <= set(result.final)
    data = json.loads((result.run_dir / "data.json").read_text())
    assert data["validation_positives_in_train"] == 0  # the grouped split held whole passages out

    queries = [{"anchor": "apple plum", "positive": "fruit apple pear plum"}, {"anchor": "storm", "positive": "sea talk"}]
    gallery = write_jsonl(tmp_path / "g.jsonl", [{"text": t} for t in ("fruit apple pear plum", "weather rain storm snow",
                                                                       "sea ship wave sail")])
    out = tunesmith.predict(str(result.run_dir), write_jsonl(tmp_path / "q.jsonl", queries), str(tmp_path / "p.jsonl"),
                            overrides=[f"embedding.gallery={gallery}", "embedding.top_k=2"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["neighbours"]) for r in records] == [2, 2]
    vectors = np.array([r["embedding"] for r in records])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    # best/ is a sentence-transformers folder: plain SentenceTransformer gives the same vectors and scores.
    plain = SentenceTransformer(str(result.best_model_dir), device="cpu", local_files_only=True)
    encoded = plain.encode([q["anchor"] for q in queries], normalize_embeddings=True)
    np.testing.assert_allclose(vectors, encoded, atol=1e-5)
    pair = plain.encode([q["positive"] for q in queries], normalize_embeddings=True)
    np.testing.assert_allclose([r["score"] for r in records], (encoded * pair).sum(1), atol=1e-5)
    assert all(r["neighbours"][0]["score"] >= r["neighbours"][1]["score"] for r in records)

    exported = tunesmith.export_onnx(str(result.run_dir), str(tmp_path / "q.jsonl"), str(tmp_path / "m.onnx"))
    assert exported["max_abs_diff"] < 1e-4 and exported["rows"] == 2


def test_a_projection_starts_as_the_identity_and_is_the_head_a_probe_trains(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer

    train = write_jsonl(tmp_path / "t.jsonl", pair_rows(40))
    plain, probe = (get_task(load_config({"task": "embedding", "model": {"source": str(tiny_bert)}, "data": {"train": train},
                                          "embedding": {"projection": projection}})) for projection in (False, True))
    for task in (plain, probe):
        task.preflight()
    torch.manual_seed(0)
    plain_model, probe_model = plain.build_model().eval(), probe.build_model().eval()
    batch = probe.collate(probe.dataset(probe.eval_rows, train=False))
    with torch.no_grad():
        torch.testing.assert_close(probe.forward(probe_model, batch), plain.forward(plain_model, batch))
    head = probe.layer_groups(probe_model)[-1]
    assert head.name == "head" and head.num_params == 32 * 32
    assert plain.layer_groups(plain_model)[-1].name != "head"  # no projection: the top block is the top group

    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
           "data": {"train": train}, "embedding": {"projection": True}, "strategy": {"freeze": "head_only"},
           "training": {"num_train_epochs": 1, "learning_rate": 1e-2, "per_device_train_batch_size": 8}}
    result = tunesmith.finetune(raw, quiet=True)
    loaded = SentenceTransformer(str(result.best_model_dir), device="cpu", local_files_only=True)
    dense = [m for m in loaded.children() if type(m).__name__ == "Dense"]
    assert len(dense) == 1
    # The last checkpoint holds the trained weights (best/ may be the start, which competes for it).
    from safetensors.torch import load_file

    last = max((result.run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    trained = load_file(str(last / "model.safetensors"))
    start = plain_model.state_dict()
    assert all(torch.equal(trained[k], start[k]) for k in start)  # the probe left the encoder alone
    assert not torch.equal(trained["2.linear.weight"], torch.eye(32))  # and trained the map


def test_verification_metrics_read_the_roc_curve():
    from tunesmith.report.ranking_metrics import verification_metrics

    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    same = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    m = verification_metrics(scores, same)
    assert m["roc_auc"] == pytest.approx(14 / 15)  # one of the 3 x 5 (match, non-match) pairs is ordered wrongly
    assert m["best_threshold_accuracy"] == pytest.approx(7 / 8) and m["threshold"] in (0.8, 0.6)
    assert m["tar_at_far_0.01"] == pytest.approx(2 / 3)  # accepting the third match costs a false accept
    assert 0 < m["eer"] < 0.34
    assert verification_metrics(scores, np.ones(8)) == {}  # one kind of pair: nothing to verify


PASSAGE_WORDS = {"fruit": ["orchard", "juice", "harvest"], "weather": ["forecast", "cloud", "cold"],
                 "sea": ["harbour", "tide", "crew"]}


def labelled_pairs(n: int, seed: int = 0) -> list[dict]:
    """A topic question against a passage of the same topic (label 1) or another (0), the passage in
    words the questions never use: matching them takes learning, not shared tokens."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        topic = str(rng.choice(list(TOPICS)))
        same = rng.random() < 0.5
        other = topic if same else str(rng.choice([t for t in TOPICS if t != topic]))
        rows.append({"anchor": " ".join(rng.choice(TOPICS[topic], size=2)),
                     "positive": " ".join(rng.permutation(PASSAGE_WORDS[other])), "same": int(same)})
    return rows


def test_labelled_pairs_train_contrastively_and_score_verification(tiny_bert, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", labelled_pairs(80))
    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
           "data": {"train": train}, "embedding": {"label_column": "same"},
           "training": {"num_train_epochs": 4, "learning_rate": 2e-3, "per_device_train_batch_size": 8}}
    config = load_config(raw)
    assert config.embedding.objective == "contrastive" and config.metric == "roc_auc"
    result = tunesmith.finetune(raw, quiet=True)
    assert {"roc_auc", "best_threshold_accuracy", "tar_at_far_0.01", "eer"} <= set(result.final)
    assert result.final["roc_auc"] > result.baseline["roc_auc"]


def test_labelled_pairs_refuse_other_losses_and_unreadable_labels(tiny_bert, tmp_path):
    base = {"task": "embedding", "model": {"source": str(tiny_bert)}}
    rows = labelled_pairs(20)
    with pytest.raises(ConfigError, match="embedding.label_column"):
        load_config({**base, "data": {"train": write_jsonl(tmp_path / "t.jsonl", rows)}, "embedding": {"loss": "contrastive"}})
    with pytest.raises(ConfigError, match="not triplet"):
        load_config({**base, "data": {"train": write_jsonl(tmp_path / "t.jsonl", rows)},
                     "embedding": {"label_column": "same", "loss": "triplet", "negative_column": "negative"}})
    with pytest.raises(ConfigError, match="lora.enabled"):
        get_task(load_config({**base, "data": {"train": write_jsonl(tmp_path / "t.jsonl", rows)},
                              "lora": {"enabled": True}})).preflight()
    rows[3]["same"] = "maybe"
    config = load_config({**base, "data": {"train": write_jsonl(tmp_path / "t.jsonl", rows)}, "embedding": {"label_column": "same"}})
    with pytest.raises(DataError, match=r"t.jsonl: line \d+: same is 'maybe'.*1 / true"):
        get_task(config).preflight()


CLASS_WORDS = ["apple", "river", "stone", "cloud", "forest", "candle", "ship", "wave", "sail", "rain", "storm", "snow",
               "pear", "plum", "bread", "milk", "horse", "tiger", "lion", "eagle"]


def class_rows(classes: int, per_class: int, seed: int = 0) -> list[dict]:
    """Texts of two words from their class's own pool of four."""
    rng = np.random.default_rng(seed)
    pools = [CLASS_WORDS[4 * (c % 5):4 * (c % 5) + 4] for c in range(classes)]
    return [{"text": " ".join(rng.choice(pools[c], size=2)) + f" {c}", "person": f"id{c}"}
            for c in range(classes) for _ in range(per_class)]


def test_rows_with_classes_train_on_p_by_k_batches_and_validate_on_held_out_classes(tiny_bert, tmp_path):
    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
           "data": {"train": write_jsonl(tmp_path / "t.jsonl", class_rows(10, 6)), "validation_split": 0.3},
           "embedding": {"anchor_column": "text", "class_column": "person", "per_class": 4},
           "training": {"num_train_epochs": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 8}}
    config = load_config(raw)
    assert config.embedding.objective == "batch_hard_triplet" and config.metric == "roc_auc"
    task = get_task(config)
    task.preflight()
    assert not set(task.train_rows.labels) & set(task.eval_rows.labels)  # validation is other classes
    task.build_model()
    batches = task.class_batches(task.dataset(task.train_rows, train=True))
    assert batches.per_class == 4 and len(set(batches.classes)) == 7
    result = tunesmith.finetune(raw, quiet=True)
    assert {"recall_at_1", "mrr_at_10", "roc_auc", "tar_at_far_0.01", "eer"} <= set(result.final)
    data = json.loads((result.run_dir / "data.json").read_text())
    assert data["validation"]["classes"] == 3 and data["validation_classes_in_train"] == 0
    with pytest.raises(ConfigError, match="class_column"):
        load_config({**raw, "embedding": {"class_column": "person", "label_column": "same"}})
    with pytest.raises(ConfigError, match="batch_hard_triplet"):
        load_config({**raw, "embedding": {"class_column": "person", "loss": "in_batch_negatives"}})


def test_class_metrics_find_a_rows_class_among_the_others():
    from tunesmith.tasks._embedding import class_metrics

    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    perfect = class_metrics(vectors, ["a", "a", "b", "b"])
    assert perfect["recall_at_1"] == 1.0 and perfect["roc_auc"] == 1.0 and perfect["eer"] == 0.0
    swapped = class_metrics(vectors, ["a", "b", "a", "b"])
    assert swapped["recall_at_1"] == 0.0 and swapped["roc_auc"] < 0.5


@pytest.mark.slow
def test_fine_tuning_minilm_on_squad_pairs_improves_retrieval_of_unseen_passages(shared_data, tmp_path):
    """demo:minilm on SQuAD question -> paragraph pairs: validation questions search the paragraphs of
    other articles (the dev file's), which training never saw."""
    squad = shared_data / "squad_dev_small"
    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": "demo:minilm"},
           "data": {"train": str(squad / "train.jsonl"), "validation": str(squad / "dev.jsonl"),
                    "max_train_samples": 800, "max_eval_samples": 400},
           "embedding": {"anchor_column": "question", "positive_column": "context"},
           "training": {"num_train_epochs": 1, "learning_rate": 5e-5, "per_device_train_batch_size": 32}}
    result = tunesmith.finetune(raw, quiet=True)
    # Measured (fp32, 2 cores, 3 min): nDCG@10 0.859 -> 0.879, recall@1 0.730 -> 0.768 on 400 dev pairs.
    assert result.final["ndcg_at_10"] > result.baseline["ndcg_at_10"] + 0.01
    assert result.final["recall_at_1"] > result.baseline["recall_at_1"]


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a tiny BERT, topic questions and passages."""
    return {"model": {"source": str(request.getfixturevalue("tiny_bert"))}, "data": {"train": make.jsonl(pair_rows(24))}}


@pytest.mark.slow
def test_questions_grouped_by_article_verify_better_on_unseen_articles(shared_data, tmp_path):
    """SQuAD questions with their article as the class: P x K batches of 8 articles x 4 questions and
    the batch-hard triplet loss; validation pairs up the questions of the dev file's other articles."""
    squad = shared_data / "squad_dev_small"
    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": "demo:minilm"},
           "data": {"train": str(squad / "train.jsonl"), "validation": str(squad / "dev.jsonl"), "max_length": 64},
           "embedding": {"anchor_column": "question", "class_column": "title", "margin": 0.25},
           "training": {"num_train_epochs": 1, "learning_rate": 5e-5, "per_device_train_batch_size": 32}}
    result = tunesmith.finetune(raw, quiet=True)
    # Measured (fp32, 47 s): ROC AUC 0.907 -> 0.917, TAR at 1% FAR 0.509 -> 0.544, EER 0.173 -> 0.164, while
    # recall@1 stays at 0.81 (0.808 -> 0.805); three epochs lower them again (benchmarks/RESULTS.md).
    assert result.final["roc_auc"] > result.baseline["roc_auc"] + 0.003
    assert result.final["eer"] < result.baseline["eer"]


def orl_split(orl: Path, folder: Path) -> tuple[str, str]:
    """ORL's metadata as two files of (path, identity): people s1-s30 to train on, s31-s40 held out."""
    import csv

    with open(orl / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    files = []
    for split in ("train", "test"):
        path = folder / f"{split}.csv"
        path.write_text("path,identity\n" + "".join(f"{r['path']},{r['identity']}\n" for r in rows if r["split"] == split),
                        encoding="utf-8")
        files.append(str(path))
    return files[0], files[1]


def test_image_rows_resolve_from_the_image_root_and_a_missing_image_is_named(shared_data, tmp_path):
    pytest.importorskip("face_recognition_models", reason="pip install -e '.[faces]'")
    from tunesmith.tasks._embedding_encoders import is_image_source

    assert is_image_source("demo:face-resnet") and not is_image_source("demo:minilm")
    orl = shared_data / "orl_faces"
    train, test = orl_split(orl, tmp_path)
    with open(train, "a", encoding="utf-8") as f:
        f.write("images/s1/11.png,s1\n")
    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": "demo:face-resnet"},
           "data": {"train": train, "validation": test, "bad_rows": "error"},
           "embedding": {"anchor_column": "path", "class_column": "identity", "image_root": str(orl)}}
    task = get_task(load_config(raw))
    with pytest.raises(DataError, match=r"1 unusable images \(.*images/s1/11.png: file not found"):
        task.preflight()
    raw["data"]["bad_rows"] = "skip"
    task = get_task(load_config(raw))
    task.preflight()
    assert len(task.train_rows) == 300 and task.describe()["unusable_images"][0]["problem"] == "file not found"
    raw["embedding"]["image_root"] = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="embedding.image_root folder"):
        get_task(load_config(raw)).preflight()


@pytest.mark.slow
def test_fine_tuning_the_face_resnet_verifies_unseen_people_better(shared_data, tmp_path):
    """demo:face-resnet (dlib's ResNet) on ORL: P x K batches of the 30 training people, validation on the
    10 others; then both models score ORL's 900 balanced test pairs through `predict`."""
    pytest.importorskip("face_recognition_models", reason="pip install -e '.[faces]'")
    from tunesmith.report.ranking_metrics import verification_metrics

    orl = shared_data / "orl_faces"
    train, test = orl_split(orl, tmp_path)
    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": "demo:face-resnet"},
           "data": {"train": train, "validation": test},
           "embedding": {"anchor_column": "path", "class_column": "identity", "image_root": str(orl)},
           "training": {"num_train_epochs": 3, "per_device_train_batch_size": 32}}
    config = load_config(raw)  # the demo's own defaults: learning rate 1e-5, no random crops
    assert config.training.learning_rate == 1e-5 and config.augmentation.preset == "none"
    assert load_config({**raw, "training": {"learning_rate": 3e-5}}).training.learning_rate == 3e-5
    result = tunesmith.finetune(raw, quiet=True)
    # Measured (bf16 on a CPU with AMX, 30 s): all 4,950 pairs of the held-out people, ROC AUC 0.921 -> 0.955,
    # EER 0.175 -> 0.125, TAR at 1% FAR 0.591 -> 0.756.
    assert result.final["roc_auc"] > result.baseline["roc_auc"] + 0.01
    assert result.final["eer"] < result.baseline["eer"]
    pairs = ["embedding.anchor_column=path_a", "embedding.positive_column=path_b"]
    scored = {}
    for name, model in (("pre-trained", "demo:face-resnet"), ("fine-tuned", str(result.run_dir))):
        out = tunesmith.predict(model, str(orl / "pairs_test.csv"), str(tmp_path / f"{name}.jsonl"), overrides=pairs)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        scored[name] = verification_metrics(np.array([r["score"] for r in records]),
                                            np.array([int(r["same"]) for r in records]))
    # Measured on the 900 pairs: ROC AUC 0.922 -> 0.954, EER 0.172 -> 0.121, TAR at 1% FAR 0.591 -> 0.738.
    assert scored["fine-tuned"]["roc_auc"] > scored["pre-trained"]["roc_auc"] + 0.01
    assert scored["fine-tuned"]["eer"] < scored["pre-trained"]["eer"]


def test_the_validation_threshold_is_saved_and_applied_to_new_pairs(tiny_bert, tmp_path):
    """best/ keeps the verification cut chosen on validation; evaluate scores a test file at it and predict
    says whether each pair matches."""
    from tunesmith.tasks._embedding import THRESHOLD_FILE

    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
           "data": {"train": write_jsonl(tmp_path / "t.jsonl", labelled_pairs(80))}, "embedding": {"label_column": "same"},
           "training": {"num_train_epochs": 2, "learning_rate": 2e-3, "per_device_train_batch_size": 8}}
    result = tunesmith.finetune(raw, quiet=True)
    saved = json.loads((result.best_model_dir / THRESHOLD_FILE).read_text())["threshold"]
    assert saved == pytest.approx(result.final["threshold"], abs=1e-6)
    test = write_jsonl(tmp_path / "test.jsonl", labelled_pairs(40, seed=7))
    metrics = tunesmith.evaluate(str(result.run_dir), test)
    assert 0 <= metrics["accuracy_at_saved_threshold"] <= metrics["best_threshold_accuracy"]
    out = tunesmith.predict(str(result.run_dir), test, str(tmp_path / "p.jsonl"))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["match"] == (r["score"] >= saved) for r in records)
    accuracy = np.mean([r["match"] == (int(r["same"]) == 1) for r in records])
    assert accuracy == pytest.approx(metrics["accuracy_at_saved_threshold"], abs=1e-6)


def test_an_arcface_head_is_its_own_group_trains_and_stays_out_of_the_encoder_folder(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer

    from tunesmith.tasks._embedding import MARGIN_HEAD_FILE

    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
           "data": {"train": write_jsonl(tmp_path / "t.jsonl", class_rows(10, 6)), "validation_split": 0.3},
           "embedding": {"anchor_column": "text", "class_column": "person", "loss": "arcface", "margin": 0.3},
           "training": {"num_train_epochs": 3, "learning_rate": 1e-3, "per_device_train_batch_size": 8}}
    task = get_task(load_config(raw))
    task.preflight()
    model = task.build_model()
    groups = task.layer_groups(model)
    assert groups[-1].name == "margin_head" and [n for n, _ in groups[-1].params] == ["margin_head.W"]
    assert groups[-1].params[0][1].shape == (32, 7)  # (D, training classes): the held-out three have none
    result = tunesmith.finetune(raw, quiet=True)
    assert {"roc_auc", "recall_at_1", "eer"} <= set(result.final) and math.isfinite(result.final["loss"])
    best = result.best_model_dir
    assert (best / MARGIN_HEAD_FILE).is_file()
    plain = SentenceTransformer(str(best), device="cpu", local_files_only=True)  # the encoder alone
    assert plain.encode(["apple river 1"]).shape == (1, 32)
    with pytest.raises(ConfigError, match="loss: arcface learns a direction per class"):
        load_config({**raw, "embedding": {"loss": "arcface"}})


def test_gallery_search_with_faiss_finds_what_numpy_finds():
    pytest.importorskip("faiss", reason="pip install faiss-cpu")
    from tunesmith.tasks import _embedding

    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(5000, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[:50] + 0.01 * rng.normal(size=(50, 16)).astype(np.float32)
    indexed = _embedding.nearest(queries, gallery, 5)  # 5,000 items: above INDEX_ABOVE, faiss
    assert len(gallery) > _embedding.INDEX_ABOVE
    _embedding.INDEX_ABOVE, saved = 10**9, _embedding.INDEX_ABOVE
    try:
        plain = _embedding.nearest(queries, gallery, 5)
    finally:
        _embedding.INDEX_ABOVE = saved
    np.testing.assert_array_equal(indexed[1], plain[1])
    np.testing.assert_allclose(indexed[0], plain[0], atol=1e-5)
    assert (indexed[1][:, 0] == np.arange(50)).all()


def test_predict_writes_embeddings_as_parquet_or_a_npy_matrix(tiny_bert, tmp_path):
    import pyarrow.parquet as pq

    raw = {"task": "embedding", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
           "data": {"train": write_jsonl(tmp_path / "t.jsonl", pair_rows(24))},
           "training": {"num_train_epochs": 1, "per_device_train_batch_size": 8}}
    run = tunesmith.finetune(raw, quiet=True).run_dir
    queries = write_jsonl(tmp_path / "q.jsonl", [{"anchor": "apple plum"}, {"anchor": "rain snow"}, {"anchor": "ship"}])
    table = pq.read_table(tunesmith.predict(str(run), queries, str(tmp_path / "p.parquet"))).to_pylist()
    matrix = np.load(tunesmith.predict(str(run), queries, str(tmp_path / "p.npy")))
    assert matrix.shape == (3, 32) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, np.array([r["embedding"] for r in table]), atol=1e-6)
    assert [r["line"] for r in table] == [1, 2, 3]


@pytest.mark.slow
def test_found_and_levelled_faces_verify_better_than_whole_photos(shared_data, tmp_path):
    """demo:mtcnn frames each ORL photo's face before demo:face-resnet embeds it: the held-out people's
    4,950 pairs, pre-trained, with and without the detector; a photo with no face is named."""
    pytest.importorskip("face_recognition_models", reason="pip install -e '.[faces]'")
    pytest.importorskip("facenet_pytorch", reason="pip install --no-deps facenet-pytorch==2.6.0")
    from PIL import Image

    orl = shared_data / "orl_faces"
    _, test = orl_split(orl, tmp_path)
    common = ["embedding.anchor_column=path", "embedding.class_column=identity", f"embedding.image_root={orl}"]
    whole = tunesmith.evaluate("demo:face-resnet", test, common)
    framed = tunesmith.evaluate("demo:face-resnet", test, [*common, "embedding.face_detector=demo:mtcnn"])
    # Measured: ROC AUC 0.921 -> 0.998, EER 0.175 -> 0.020, TAR at 1% FAR 0.591 -> 0.958.
    assert framed["roc_auc"] > whole["roc_auc"] + 0.05 and framed["eer"] < whole["eer"] / 2

    Image.new("RGB", (92, 112), (128, 128, 128)).save(tmp_path / "blank.png")
    (tmp_path / "faces.csv").write_text(f"path,identity\n{tmp_path / 'blank.png'},x\n{orl / 'images/s1/1.png'},s1\n",
                                        encoding="utf-8")
    raw = {"task": "embedding", "model": {"source": "demo:face-resnet"},
           "data": {"validation": str(tmp_path / "faces.csv"), "bad_rows": "error"},
           "embedding": {"anchor_column": "path", "class_column": "identity", "face_detector": "demo:mtcnn"}}
    with pytest.raises(DataError, match=r"blank.png: no face found.*leave embedding.face_detector unset"):
        get_task(load_config(raw)).preflight()
    with pytest.raises(tunesmith.errors.ModelSourceError, match="demo:mtcnn is a MTCNN face detector"):
        tunesmith.finetune({**raw, "model": {"source": "demo:mtcnn"}, "data": {"train": test},
                            "embedding": {**raw["embedding"], "image_root": str(orl)}, "output_dir": str(tmp_path / "r")},
                           quiet=True)
