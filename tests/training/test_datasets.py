"""Training data: TextVid task mix and answer balancing, fail-fast errors, video-QA layouts, collator."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import random

import pytest
import torch

from topa_plugin.features.writer import write_sharded
from topa_plugin.processing import IGNORE_INDEX
from topa_plugin.textvid import TextVidError, sample_path, write_jsonl
from topa_plugin.training.collator import BATCH_TASK, TopaCollator
from topa_plugin.training.samples import MULTIPLE_CHOICE, OPEN_ENDED, SUMMARY, DataError, balance_options, caption_slot_task
from topa_plugin.training.textvid_dataset import TextVidDataset
from topa_plugin.training.videoqa_dataset import VideoQADataset, read_video_qa

DIM = 16
OPTIONS = ["cut the onion", "washed the pan", "opened the fridge", "poured the water", "left the kitchen"]


def write_store(directory, features: dict[str, torch.Tensor]):
    """A feature store in the `topa features` format, without running CLIP."""
    keys = list(features)
    write_sharded(directory, {"kind": "test", "encoder": "random", "dim": DIM}, keys, keys,
                  lambda ks: {k: features[k] for k in ks}, shard_size=64, dtype="float32")
    return directory


def random_frames(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def textvid_store(tmp_path_factory, records):
    features = {r.idx: random_frames(len(r.frames), i) for i, r in enumerate(records)}
    return write_store(tmp_path_factory.mktemp("textvid_store"), features)


def supervised(sample) -> torch.Tensor:
    return sample["labels"] != IGNORE_INDEX


# ---------------------------------------------------------------- release rules

def test_balance_options_shuffles_and_tracks_the_answer():
    rng = random.Random(0)
    positions = collections.Counter()
    for _ in range(200):
        options, answer = balance_options(OPTIONS, 1, rng)
        assert sorted(options) == sorted(OPTIONS)
        assert options[answer] == "washed the pan"
        positions[answer] += 1
    assert set(positions) == set(range(5))
    assert min(positions.values()) > 20


@pytest.mark.parametrize("answer_text", ["Both A and B", "All of the above", "None of them", "a ball", "his hand"])
def test_balance_keeps_order_when_the_answer_text_contains_a_release_keyword(answer_text):
    options = [*OPTIONS[:4], answer_text]
    assert balance_options(options, 4, random.Random(0)) == (options, 4)


def test_caption_slot_follows_the_release_probabilities():
    rng = random.Random(0)
    n = 8000
    mix = collections.Counter(caption_slot_task("they cut it", "cut the onion", rng) for _ in range(n))
    assert abs(mix[OPEN_ENDED] / n - 0.5) < 0.03 and abs(mix[SUMMARY] / n - 0.5) < 0.03
    assert set(caption_slot_task(None, "cut the onion", rng) for _ in range(100)) == {SUMMARY}
    # The release skips open-ended QA when the correct option says "both"/"all".
    assert set(caption_slot_task("they cut it", "both of them", rng) for _ in range(100)) == {SUMMARY}


def test_each_batch_is_one_task_chosen_by_a_fair_per_visit_coin(processor, textvid_store):
    """The release flips one multiple-choice/caption coin per step: a batch never mixes them."""
    ds = TextVidDataset(sample_path(), textvid_store, processor, max_seq_len=512, seed=0)
    collate = TopaCollator(pad_token_id=processor.eos_id)
    coins = []
    for start in range(0, len(ds), 6):
        items = [ds[i] for i in range(start, min(start + 6, len(ds)))]
        coins += [item["task_coin"] for item in items]
        batch = collate(items)
        texts = [processor.decode(row[mask.bool()].tolist()) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        kinds = {"Choose the correct answer" in t for t in texts}
        assert kinds == {items[0]["task_coin"]}, texts
        assert batch[BATCH_TASK] == ("multiple_choice" if items[0]["task_coin"] else "caption")
        expected = items if items[0]["task_coin"] else [item["caption"] for item in items]
        assert [int(m.sum()) for m in batch["attention_mask"]] == [len(e["input_ids"]) for e in expected]
    assert 0.3 < sum(coins) / len(coins) < 0.7


# ---------------------------------------------------------------- TextVid dataset

def test_textvid_samples_mix_tasks_and_supervise_only_answers(processor, records, textvid_store):
    ds = TextVidDataset(sample_path(), textvid_store, processor, max_seq_len=512, answer_balance=True, seed=0)
    assert len(ds) == len(records) and ds.feature_dim == DIM
    tasks = collections.Counter()

    def check(sample, index):
        ids, labels, mask = sample["input_ids"], sample["labels"], supervised(sample)
        assert mask.any()
        first = int(mask.nonzero()[0])
        assert mask[first:].all() and ids[-1] == processor.eos_id  # one answer span through </s>
        assert torch.equal(labels[mask], ids[mask])
        video = sample["video_features"]
        assert video.shape == (10, DIM) and video.dtype == torch.float32
        n_frames = min(len(records[index].frames), 10)
        assert torch.allclose(video[:n_frames].norm(dim=-1), torch.ones(n_frames), atol=1e-5)
        assert not video[n_frames:].any()  # zero padding, as the release
        assert ids[sample["video_start"] - 1] != processor.placeholder_id
        text = processor.decode(ids.tolist())
        answer = processor.decode(ids[first:].tolist())
        if "Choose the correct answer" in text:
            tasks[MULTIPLE_CHOICE] += 1
            assert answer.strip().startswith("choice is (") or answer.strip().startswith("(")
        elif "Generate a summary" in text:
            tasks[SUMMARY] += 1
            assert records[index].global_video_caption.split()[0] in answer
        else:
            assert "Predict the answer" in text
            tasks[OPEN_ENDED] += 1

    for index in range(len(ds)):
        item = ds[index]
        check(item, index)
        check(item["caption"], index)
    assert set(tasks) == {MULTIPLE_CHOICE, SUMMARY, OPEN_ENDED}


def test_textvid_answer_balancing_moves_the_correct_letter(processor, records, textvid_store, tmp_path):
    """Balanced, the supervised letter varies; unbalanced it always equals the record's answer."""
    record, qa = next((r, q) for r in records for q in r.qas
                      if not any(w in q.answer_text.lower() for w in ("both", "all", "none", "and")))
    one_qa = write_jsonl(tmp_path / "one.jsonl", [dataclasses.replace(record, qas=[qa])])
    letters = {}
    for balance in (True, False):
        ds = TextVidDataset(one_qa, textvid_store, processor, max_seq_len=512, answer_balance=balance, seed=1)
        texts = []
        for epoch in range(200):  # each epoch's visit draws its own option order
            ds.set_epoch(epoch)
            texts.append(processor.decode(ds[0]["input_ids"].tolist()))
        letters[balance] = collections.Counter(t.rstrip()[-2] for t in texts if "Choose the correct answer" in t)
    assert set(letters[False]) == {qa.answer}
    assert len(letters[True]) >= 3


def test_textvid_questions_follow_the_release_question_mark_rule(processor, records, textvid_store):
    """The release appends "?" to every TextVid question that does not end in "?" ("... the task." becomes
    "... the task.?") in its multiple-choice and open-ended prompts; --question_mark keep_period keeps the "."."""
    record, qa = next((r, q) for r in records for q in r.qas if q.answer_open_ended and "both" not in
                      q.answer_text.lower() and "all" not in q.answer_text.lower())
    one_qa = dataclasses.replace(record, qas=[dataclasses.replace(qa, question="describe the task.")])
    seen = collections.Counter()
    for rule, extra in (("always", {}), ("keep_period", {"question_mark": "keep_period"})):
        ds = TextVidDataset(sample_path(), textvid_store, processor, max_seq_len=512, seed=0, **extra)
        ds.record = lambda index: one_qa  # every visit reads the edited record
        for i in range(min(40, len(ds))):
            for sample in (ds[i], ds[i]["caption"]):
                text = processor.decode(sample["input_ids"].tolist())
                if "Question:" in text:
                    seen[rule, "Predict the answer" in text] += 1
                    assert ("Describe the task.?\n" in text) is (rule == "always"), text
                    assert "Describe the task.\n" in text or rule == "always"
    assert set(seen) == {(rule, open_ended) for rule in ("always", "keep_period") for open_ended in (True, False)}


def test_visits_are_reproducible_and_change_with_the_epoch(processor, textvid_store):
    ds = TextVidDataset(sample_path(), textvid_store, processor, max_seq_len=512, noise_variance=0.01, seed=3)

    def epoch_samples(epoch):
        ds.set_epoch(epoch)
        return [ds[i] for i in range(len(ds))]

    first, again, second = epoch_samples(0), epoch_samples(0), epoch_samples(1)
    for a, b in zip(first, again):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["video_features"], b["video_features"])
    changed = sum(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, second))
    assert changed > len(ds) // 2


def test_noise_injection_changes_features_and_keeps_unit_norm(processor, textvid_store):
    clean = TextVidDataset(sample_path(), textvid_store, processor, max_seq_len=512, seed=0)
    noisy = TextVidDataset(sample_path(), textvid_store, processor, max_seq_len=512, noise_variance=0.01, seed=0)
    a, b = clean[0]["video_features"], noisy[0]["video_features"]
    rows = a.norm(dim=-1) > 0
    assert not torch.allclose(a[rows], b[rows])
    assert torch.allclose(b[rows].norm(dim=-1), torch.ones(int(rows.sum())), atol=1e-5)


def test_truncated_answer_still_fails_per_sample_without_the_length_check(processor, textvid_store):
    """The backstop behind the construction-time check (e.g. a reordered option list a token longer)."""
    ds = TextVidDataset(sample_path(), textvid_store, processor, max_seq_len=24, seed=0, check_lengths=False)
    with pytest.raises(DataError) as err:
        ds[3]
    message = str(err.value)
    assert str(sample_path()) in message and "record 3" in message and "max_seq_len=24" in message


def answer_start(prompt) -> int:
    return next(i for i, label in enumerate(prompt.labels) if label != IGNORE_INDEX)


def overlong_qas(processor, records, max_seq_len) -> set[tuple[int, int]]:
    """(record, QA) pairs whose multiple-choice or open-ended prompt starts its answer at or past max_seq_len."""
    bad = set()
    for r, record in enumerate(records):
        for q, qa in enumerate(record.qas):
            prompts = [processor.encode_multiple_choice(qa.question, qa.options, qa.answer_index)]
            if qa.answer_open_ended and not any(w in qa.answer_text.lower() for w in ("both", "all")):
                prompts.append(processor.encode_open_ended(qa.question, qa.answer_open_ended))
            if any(answer_start(p) >= max_seq_len for p in prompts):
                bad.add((r, q))
    return bad


def test_overlong_answers_are_all_reported_at_construction(processor, records, textvid_store):
    """A prompt whose answer max_seq_len cuts off stops the run before training, listing every such QA."""
    bad = overlong_qas(processor, records, 175)
    assert 0 < len(bad) < sum(len(r.qas) for r in records)  # the sample straddles 175 tokens
    with pytest.raises(DataError) as err:
        TextVidDataset(sample_path(), textvid_store, processor, max_seq_len=175)
    message = str(err.value)
    assert "max_seq_len=175" in message and "--overlong skip" in message
    reported = set()
    for line in message.splitlines()[1:]:
        head = line.split(": QAs[")[0]
        r = int(head.rsplit("record ", 1)[1].split(" ")[0])
        assert line.startswith(f"{sample_path()}: record {r} (id {records[r].idx!r}): QAs[")
        reported.add((r, int(line.split(": QAs[")[1].split("]")[0])))
    assert reported == bad


def test_overlong_skip_leaves_out_only_the_reported_qas_and_says_so(processor, records, textvid_store, caplog):
    bad = overlong_qas(processor, records, 155)
    with caplog.at_level("WARNING", logger="topa_plugin.training"):
        ds = TextVidDataset(sample_path(), textvid_store, processor, max_seq_len=155, overlong="skip")
    usable = {r: [q for q in range(len(rec.qas)) if (r, q) not in bad] for r, rec in enumerate(records)}
    kept = [r for r in range(len(records)) if usable[r]]
    assert len(kept) < len(records)  # some record loses every QA: the positions below must shift
    assert [ds.record(i).idx for i in range(len(ds))] == [records[r].idx for r in kept]
    assert f"{len(bad)} QA(s) and {len(records) - len(kept)} record(s)" in caplog.text
    for epoch in range(3):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            sample = ds[index]  # the backstop would raise for a skipped QA
            assert supervised(sample).any() and len(sample["input_ids"]) <= 155
    # messages keep naming the record's position in the file
    assert ds._where(len(ds) - 1).startswith(f"{sample_path()}: record {kept[-1]} ")


def test_overlong_policy_is_checked(processor, textvid_store):
    with pytest.raises(ValueError, match="overlong='drop'"):
        TextVidDataset(sample_path(), textvid_store, processor, overlong="drop")


def test_bad_record_fails_fast_naming_file_record_and_field(processor, tmp_path, textvid_store):
    lines = sample_path().read_text().splitlines()
    bad = json.loads(lines[4])
    bad["QAs"][0]["answer"] = "F"
    lines[4] = json.dumps(bad)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TextVidError) as err:
        TextVidDataset(path, textvid_store, processor)
    message = str(err.value)
    assert str(path) in message and "record 4" in message and "QAs[0].answer" in message


def test_missing_features_fail_fast(processor, records, tmp_path):
    features = {r.idx: random_frames(len(r.frames), 0) for r in records[1:]}
    store = write_store(tmp_path / "store", features)
    with pytest.raises(DataError) as err:
        TextVidDataset(sample_path(), store, processor)
    assert f"record 0 (id {records[0].idx!r}): idx: not in the feature index" in str(err.value)


def test_feature_rows_must_match_the_record_frames_at_construction(processor, records, tmp_path):
    features = {r.idx: random_frames(len(r.frames), 0) for r in records}
    features[records[2].idx] = random_frames(len(records[2].frames) + 1, 0)
    with pytest.raises(DataError, match=rf"record 2 .*: frames: {len(records[2].frames)} frames but "
                                        rf"{len(records[2].frames) + 1} feature rows"):
        TextVidDataset(sample_path(), write_store(tmp_path / "store", features), processor, max_seq_len=512)


# ---------------------------------------------------------------- collator

def test_collator_pads_to_the_longest_sample_only():
    def sample(n, start):
        return {"input_ids": torch.arange(1, n + 1), "labels": torch.full((n,), 7),
                "video_features": torch.ones(10, DIM), "video_start": start}

    batch = TopaCollator(pad_token_id=0)([sample(5, 3), sample(9, 7)])
    assert batch["input_ids"].shape == (2, 9) and batch["labels"].shape == (2, 9)
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 9]
    assert batch["input_ids"][0, 5:].eq(0).all() and batch["labels"][0, 5:].eq(IGNORE_INDEX).all()
    assert batch["video_start"].dtype == torch.long and batch["video_start"].tolist() == [3, 7]
    assert batch["video_features"].shape == (2, 10, DIM)
    assert BATCH_TASK not in batch  # only TextVid batches have a step kind


# ---------------------------------------------------------------- video QA layouts

def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def nextqa_row(video, answer):
    return {"video": video, "qid": 0, "type": "TN", "question": "what happens after the cut", "answer": answer,
            **{f"a{i}": option for i, option in enumerate(OPTIONS)}}


def test_layouts_parse(tmp_path):
    nextqa = read_video_qa(write_csv(tmp_path / "train.csv", [nextqa_row("101", 2)]))
    assert (nextqa[0].video_id, nextqa[0].options, nextqa[0].answer, nextqa[0].start) == ("101", OPTIONS, 2, None)

    star = {"video_id": "6H78U", "question_id": "Interaction_T1_13", "question": "Which object was tidied up?",
            "choices": [{"choice_id": i, "choice": o} for i, o in reversed(list(enumerate(OPTIONS[:4])))],
            "answer": "opened the fridge", "start": 11.1, "end": 19.6}
    (tmp_path / "STAR_train.json").write_text(json.dumps([star]))
    item = read_video_qa(tmp_path / "STAR_train.json")[0]
    assert (item.video_id, item.options, item.answer, item.start, item.end) == ("6H78U", OPTIONS[:4], 2, 11.1, 19.6)

    tvqa = {"vid_name": "castle_s01e01_seg02_clip_00", "q": "Who enters?", "answer_idx": 4, "ts": "20.5-33.0",
            **{f"a{i}": o for i, o in enumerate(OPTIONS)}}
    (tmp_path / "tvqa_train.jsonl").write_text(json.dumps(tvqa) + "\n" + json.dumps({**tvqa, "ts": "NaN-NaN"}) + "\n")
    first, unknown = read_video_qa(tmp_path / "tvqa_train.jsonl")
    assert (first.answer, first.start, first.end) == (4, 20.5, 33.0)
    assert (unknown.start, unknown.end) == (None, None)

    (tmp_path / "qa.jsonl").write_text(json.dumps({"video_id": "v", "question": "q?", "options": OPTIONS, "answer": "B"}) + "\n")
    assert read_video_qa(tmp_path / "qa.jsonl")[0].answer == 1


def test_bad_video_qa_rows_are_all_reported_with_their_field(tmp_path):
    rows = [nextqa_row("1", 0), nextqa_row("2", 7), {**nextqa_row("3", 1), "a2": ""}]
    path = write_csv(tmp_path / "val.csv", rows)
    with pytest.raises(DataError) as err:
        read_video_qa(path)
    message = str(err.value)
    assert f"{path}: record 1: answer: answer '7' out of range for 5 options" in message
    assert f"{path}: record 2: a2: missing" in message
    assert "record 0" not in message


def test_video_qa_dataset_samples_and_segments(processor, tmp_path):
    ramp = torch.zeros(40, DIM)
    ramp[torch.arange(40), torch.arange(40) % DIM] = 1.0  # row r is one-hot at r % DIM
    store = write_store(tmp_path / "videos", {"vidA": ramp})
    tvqa = {"vid_name": "vidA", "q": "Who enters?", "answer_idx": 3, "ts": "2.0-4.0",
            **{f"a{i}": o for i, o in enumerate(OPTIONS)}}
    (tmp_path / "qa.jsonl").write_text(json.dumps(tvqa) + "\n")
    ds = VideoQADataset(tmp_path / "qa.jsonl", store, processor, feature_fps=3, max_seq_len=512)
    sample = ds[0]
    text = processor.decode(sample["input_ids"].tolist())
    assert "Choose the correct answer" in text and text.rstrip().endswith("(D)")
    # seconds 2..4 at 3 rows/s are rows 6..14 (9 rows), zero-padded to 10 slots
    video = sample["video_features"]
    assert video[:9].argmax(dim=-1).tolist() == [r % DIM for r in range(6, 15)] and not video[9].any()
    whole = VideoQADataset(tmp_path / "qa.jsonl", store, processor, max_seq_len=512)[0]["video_features"]
    assert whole.argmax(dim=-1).tolist() == [(j * 40 // 10) % DIM for j in range(10)]


def test_video_qa_overlong_questions_fail_at_construction_or_are_skipped(processor, tmp_path, caplog):
    store = write_store(tmp_path / "videos", {"v1": random_frames(4, 0), "v2": random_frames(4, 1)})
    long_question = "what does the person do " + "after that " * 40
    rows = [nextqa_row("v1", 0), {**nextqa_row("v2", 1), "question": long_question}]
    path = write_csv(tmp_path / "train.csv", rows)
    limit = answer_start(processor.encode_multiple_choice(rows[0]["question"], OPTIONS, 0)) + 5
    with pytest.raises(DataError) as err:
        VideoQADataset(path, store, processor, max_seq_len=limit)
    assert f"{path}: record 1 (video 'v2'): question as multiple_choice" in str(err.value)
    assert "record 0" not in str(err.value)
    with caplog.at_level("WARNING", logger="topa_plugin.training"):
        ds = VideoQADataset(path, store, processor, max_seq_len=limit, overlong="skip")
    assert [it.video_id for it in ds.items] == ["v1"] and "1 row(s)" in caplog.text
    assert supervised(ds[0]).any()
