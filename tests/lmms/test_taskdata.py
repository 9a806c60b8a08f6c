"""The lmms-eval registration, the shipped EgoSchema task folder and `topa lmms-tasks`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from topa_plugin import cli
from topa_plugin.lmms import task_utils
from topa_plugin.lmms.choices import letters_and_texts, options_from_prompt, split_option
from topa_plugin.lmms.taskdata import DATA_FILE, TASKS_DIR, TaskDataError, prepare_rows, read_rows, write_task_folder

OPTIONS = ["c opens the door. then he leaves", "c sits", "c reads", "c writes", "c sleeps"]


def row(i=0, **changes):
    base = {"video_idx": f"v{i}", "question": "what does c do?",
            "option": [f"{'ABCDE'[j]}. {o}" for j, o in enumerate(OPTIONS)], "answer": 2}
    return {**base, **changes}


@pytest.fixture
def video_dir(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        (videos / f"v{i}.mp4").write_bytes(b"mp4")  # existence is all the folder writer checks
    return videos


def test_manifest_imports_nothing_and_registers_topa_even_when_imported_first():
    pytest.importorskip("lmms_eval")
    script = (
        "import sys\n"
        "import topa_plugin.lmms.manifest as m\n"
        "assert not [k for k in sys.modules if k.startswith('lmms_eval')], 'manifest import pulled in lmms_eval'\n"
        "print(m.MANIFEST.simple_class_path)\n"
        "import lmms_eval.models as models\n"
        "cls = models.get_model('topa')\n"
        "print(cls.__module__ + '.' + cls.__name__, cls.is_simple)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["topa_plugin.lmms.model.Topa", "topa_plugin.lmms.model.Topa", "True"]


@pytest.mark.parametrize("text, expected", [
    ("A. c cooks", ("A", "c cooks")),
    ("(B) c cleans", ("B", "c cleans")),
    ("C) c sits", ("C", "c sits")),
    ("D: c reads", ("D", "c reads")),
    ("A person walks", (None, "A person walks")),
    ("a. lower case is text", (None, "a. lower case is text")),
])
def test_split_option(text, expected):
    assert split_option(text) == expected


def test_unlettered_options_get_letters_in_order():
    assert letters_and_texts(["x", "B. y"]) == (["A", "B"], ["x", "y"])


def test_options_from_prompt_takes_consecutive_lettered_lines():
    prompt = "What does c do?\nWatch closely.\nA. sits\nB. reads\nC. writes\nAnswer with the option's letter."
    assert options_from_prompt(prompt) == ("What does c do?\nWatch closely.", ["A. sits", "B. reads", "C. writes"])
    assert options_from_prompt("What does c do?\nA. sits\nC. writes") is None
    assert options_from_prompt("A person walks in.\nB") is None


def test_doc_to_choice_keeps_option_text_after_its_first_dot():
    assert task_utils.doc_to_choice(row()) == OPTIONS


def test_resolve_video_prefers_the_rows_path_then_the_env_folder_then_hf_home(tmp_path, monkeypatch, video_dir):
    monkeypatch.delenv(task_utils.VIDEO_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hf_videos = tmp_path / "hf" / "egoschema" / "videos"
    hf_videos.mkdir(parents=True)
    (hf_videos / "v1.MP4").write_bytes(b"mp4")
    assert task_utils.doc_to_visual({"video_idx": "v1"}) == [str(hf_videos / "v1.MP4")]
    monkeypatch.setenv(task_utils.VIDEO_DIR_ENV, str(video_dir))
    assert task_utils.doc_to_visual({"video_idx": "v1"}) == [str(video_dir / "v1.mp4")]
    assert task_utils.doc_to_visual({"video_idx": "v1", "video_path": str(video_dir / "v2.mp4")}) == [str(video_dir / "v2.mp4")]
    with pytest.raises(task_utils.MissingVideoError,
                       match=rf"video_idx='v9': video not found \(tried {video_dir}/v9.mp4, {video_dir}/v9.MP4\)"):
        task_utils.doc_to_visual({"video_idx": "v9"})


def test_shipped_yamls_define_both_tasks_and_all_their_functions_resolve():
    load_yaml_config = pytest.importorskip("lmms_eval.utils").load_yaml_config

    tasks = {}
    for path in TASKS_DIR.glob("*.yaml"):
        config = load_yaml_config(str(path), mode="full")
        if "task" in config:
            tasks[config["task"]] = config
    assert set(tasks) == {"topa_egoschema_local", "topa_egoschema_local_mcppl"}
    assert tasks["topa_egoschema_local"]["output_type"] == "generate_until"
    assert tasks["topa_egoschema_local_mcppl"]["output_type"] == "multiple_choice"
    for config in tasks.values():
        assert config["doc_to_visual"] is task_utils.doc_to_visual
        assert config["dataset_kwargs"]["data_files"] == {"test": DATA_FILE}
        assert callable(config["process_results"]) and callable(config["metric_list"][0]["aggregation"])


def test_topa_lmms_tasks_prints_the_shipped_folder(capsys):
    assert cli.main(["lmms-tasks"]) == 0
    assert capsys.readouterr().out.strip() == str(TASKS_DIR)


def test_task_folder_from_parquet_with_relative_paths_and_unlettered_options(tmp_path, video_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [row(0, option=OPTIONS, answer=4, video_path=None), row(1, video_path="videos/v2.mp4")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    out = tmp_path / "tasks"
    assert cli.main(["lmms-tasks", "--data", str(tmp_path / "rows.parquet"), "--videos", str(video_dir), "--out", str(out)]) == 0
    written = [json.loads(line) for line in (out / DATA_FILE).read_text().splitlines()]
    assert [r["video_path"] for r in written] == [str(video_dir / "v0.mp4"), str(video_dir / "v2.mp4")]
    assert written[0]["option"] == row()["option"] and written[0]["answer"] == 4
    assert sorted(p.name for p in out.glob("*.yaml")) == sorted(p.name for p in TASKS_DIR.glob("*.yaml"))


def test_every_bad_row_is_reported_with_file_row_and_field(tmp_path, video_dir):
    data = tmp_path / "rows.jsonl"
    rows = [row(0, answer="3"), row(1, option=OPTIONS[:4]), row(2, answer=True), row(3), row(4, question="")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TaskDataError) as info:
        prepare_rows(data, video_dir)
    message = str(info.value)
    assert message.startswith(f"4 problem(s) in {data}:")
    assert f"{data} row 1 (video_idx 'v1') field 'option': expected 5 non-empty strings" in message
    assert f"{data} row 2 (video_idx 'v2') field 'answer': expected an option index 0-4, got True" in message
    assert f"{data} row 3 (video_idx 'v3') field 'video_path': video not found ({video_dir}/v3.mp4)" in message
    assert f"{data} row 4 (video_idx 'v4') field 'question'" in message
    assert "row 0" not in message


@pytest.mark.parametrize("name, content, message", [
    ("rows.jsonl", '{"video_idx": "v0"}\n{oops\n', r"rows.jsonl: line 2: invalid JSON"),
    ("rows.json", '{"video_idx": "v0"}', r"expected a JSON list of rows, got dict"),
    ("rows.csv", "video_idx\nv0\n", r"unsupported file type '.csv'"),
    ("empty.jsonl", "", r"empty.jsonl: no rows"),
])
def test_unreadable_data_files_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(TaskDataError, match=message):
        write_task_folder(tmp_path / name, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_data_or_video_folder(tmp_path):
    with pytest.raises(TaskDataError, match="absent.jsonl: file not found"):
        read_rows(tmp_path / "absent.jsonl")
    (tmp_path / "rows.jsonl").write_text(json.dumps(row()) + "\n")
    with pytest.raises(TaskDataError, match="video folder not found"):
        prepare_rows(tmp_path / "rows.jsonl", tmp_path / "no_videos")
