"""``topa serve`` as a real subprocess with the toy models: the ``/answer`` API through ``gradio_client``
(answers equal ``Asker.ask``'s, also under 16 concurrent clients; bad input gets a message and the server
keeps serving; uploads are removed), the bind address, and the page in headless Chromium."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")

from tests.helpers.browser import console_errors, open_browser, save_screenshot, screenshot_is_blank  # noqa: E402
from tests.helpers.lmms_fixtures import MAX_FEATS, build_topa_checkpoint, write_garbage_video  # noqa: E402
from tests.helpers.memory_fixtures import build_textvid_memory  # noqa: E402
from tests.helpers.serve_process import start_serve, write_truncated_video  # noqa: E402

# (video seed, question, options text): multiple choice with 3 and 5 options, and free generation.
CASES = [
    (100, "What is the main activity c performs throughout the video?", "c cooks a meal\nc cleans the kitchen\nc repairs a bicycle"),
    (101, "Which tool does c use most often?", "a knife\na hammer\na brush\na spoon\na pair of scissors"),
    (102, "What does the person do?", ""),
]


@pytest.fixture(scope="module")
def fx(tmp_path_factory, toy_llama_dir, toy_clip):
    from topa_plugin.demo.toy import write_toy_video

    root = tmp_path_factory.mktemp("serve")
    checkpoint = build_topa_checkpoint(root / "checkpoint", toy_llama_dir)
    _, _, memory = build_textvid_memory(root / "memory", toy_clip)  # rows know their captions
    videos = {seed: write_toy_video(root / "videos" / f"clip{seed}.mp4", n_frames=24, seed=seed) for seed, _, _ in CASES}
    seed, question, options = CASES[0]  # the first example (clip100) comes with its question
    (root / "videos" / "examples.jsonl").write_text(
        json.dumps({"video": f"clip{seed}.mp4", "question": question, "options": options.splitlines()}) + "\n")
    return {"root": root, "checkpoint": checkpoint, "clip": toy_clip, "memory": memory, "videos": videos}


@pytest.fixture(scope="module")
def server(fx):
    served = start_serve(fx["checkpoint"], fx["clip"], fx["root"] / "serve.log", "--memory", str(fx["memory"]),
                         "--examples", str(fx["root"] / "videos"))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def expected(fx):
    """What ``Asker.ask`` answers in this process for each case: (answer text, scores)."""
    from topa_plugin.ask import Asker
    from topa_plugin.serve.app import parse_options

    asker = Asker.from_pretrained(fx["checkpoint"], clip_model=str(fx["clip"][0]), clip_pretrained=str(fx["clip"][1]),
                                  memory=fx["memory"], device="cpu")
    answers = {}
    for seed, question, options in CASES:
        answer = asker.ask(fx["videos"][seed], question, parse_options(options))
        answers[seed] = (answer.answer, answer.scores)
    return answers


def ask_server(url: str, video, question: str, options: str, auth: tuple[str, str] | None = None):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, auth=auth)
    try:
        return client.predict(handle_file(str(video)), question, options, api_name="/answer")
    finally:
        client.close()


def test_answers_equal_asker(fx, server, expected):
    texts = set()
    for seed, question, options in CASES:
        answer, scores, explanation = ask_server(server.url, fx["videos"][seed], question, options)
        want_answer, want_scores = expected[seed]
        assert answer == want_answer
        assert [row["option"] for row in scores] == [line for line in options.splitlines()]
        assert [row["mean_nll"] for row in scores] == pytest.approx(want_scores, abs=1e-5)
        assert "<iframe" in explanation and "srcdoc=" in explanation
        texts.add(answer)
    assert len(texts) == len(CASES)  # the cases get different answers: a server answering one thing fails


def test_answers_equal_topa_ask(fx, server):
    """The command line gives the page's answer and scores for the same video, question and options."""
    seed, question, options = CASES[1]
    command = [sys.executable, "-m", "topa_plugin.cli", "ask", str(fx["videos"][seed]), "--checkpoint", str(fx["checkpoint"]),
               "--clip-model", str(fx["clip"][0]), "--clip-pretrained", str(fx["clip"][1]), "--memory", str(fx["memory"]),
               "--device", "cpu", "--question", question, "--json"]
    command += [arg for option in options.splitlines() for arg in ("--option", option)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)
    answer, scores, _ = ask_server(server.url, fx["videos"][seed], question, options)
    assert answer == cli["answer"]
    assert [row["mean_nll"] for row in scores] == pytest.approx(cli["scores"], abs=1e-5)


def test_sixteen_concurrent_clients(fx, server, expected):
    jobs = [CASES[i % 2] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda case: ask_server(server.url, fx["videos"][case[0]], case[1], case[2]), jobs))
    for (seed, _, _), (answer, scores, _) in zip(jobs, results):
        assert answer == expected[seed][0]
        assert [row["mean_nll"] for row in scores] == pytest.approx(expected[seed][1], abs=1e-5)


def test_bad_inputs_get_a_message_and_the_server_keeps_serving(fx, server, expected):
    from gradio_client.exceptions import AppError

    root = fx["root"]
    good = fx["videos"][100]
    bad = [
        (write_garbage_video(root / "bad" / "not_a_video.mp4"), "What happens?", "a\nb", "not_a_video.mp4: not a video"),
        (write_truncated_video(root / "bad" / "cut.mp4"), "What happens?", "a\nb", "cut.mp4: packet"),
        (good, "   ", "a\nb", "question: empty"),
        (good, "What happens?", "only one", "options: only one"),
    ]
    for video, question, options, message in bad:
        with pytest.raises(AppError) as raised:
            ask_server(server.url, video, question, options)
        assert message in str(raised.value)
        assert "Traceback" not in str(raised.value) and str(root) not in str(raised.value)
        answer, _, _ = ask_server(server.url, good, CASES[0][1], CASES[0][2])
        assert answer == expected[100][0]
    log = server.log_text()
    assert log.count("refused a request") >= len(bad) and "Traceback" not in log  # one line each


def test_limits_auth_and_upload_cleanup(fx):
    """A second server with small limits and a login: a long video and a large file are refused with messages,
    a client without the login gets nothing, and uploads are gone after the retention and when the server stops."""
    from gradio_client.exceptions import AppError

    from topa_plugin.demo.toy import write_toy_video

    root = fx["root"]
    users = root / "users.txt"
    users.write_text("# demo users\nann:secret\n")
    login = ("ann", "secret")
    served = start_serve(fx["checkpoint"], fx["clip"], root / "limits.log", "--max-duration-s", "5",
                         "--max-upload-mb", "1", "--upload-retention-s", "2", "--auth", str(users))
    try:
        uploads = served.upload_dir()
        with pytest.raises(ValueError, match="Could not login"):
            ask_server(served.url, fx["videos"][100], CASES[0][1], CASES[0][2], auth=("ann", "wrong"))
        with pytest.raises(ValueError, match="credentials were not provided"):
            ask_server(served.url, fx["videos"][100], CASES[0][1], CASES[0][2])
        long_video = write_toy_video(root / "limits" / "long.mp4", n_frames=64, fps=8)  # 8 s
        with pytest.raises(AppError, match=r"long.mp4: 8 s of video is over the server's limit of 5 s"):
            ask_server(served.url, long_video, "What happens?", "a\nb", auth=login)
        large = root / "limits" / "large.mp4"
        large.write_bytes(bytes(2 * 1024 * 1024))
        with pytest.raises(Exception, match=r"(?i)maximum allowed size|too large|exceeds"):
            ask_server(served.url, large, "What happens?", "a\nb", auth=login)
        answer, _, _ = ask_server(served.url, fx["videos"][100], CASES[0][1], CASES[0][2], auth=login)
        assert answer
        deadline = time.monotonic() + 20
        while any(p.is_file() for p in uploads.rglob("*")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(p.is_file() for p in uploads.rglob("*")), sorted(uploads.rglob("*"))
    finally:
        served.stop()
    assert not uploads.exists()


def test_default_bind_is_loopback_only(server):
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    # Another address of this machine (127.0.0.2 is on the loopback interface too) reaches a socket bound
    # to it, but not the server: it listens on 127.0.0.1 only.
    with socket.create_server(("127.0.0.2", 0)) as control, socket.create_connection(control.getsockname(), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5).close()
    assert "reachable from other machines" not in server.log_text()


def test_page_in_browser(fx, server, expected, tmp_path):
    """Upload an mp4, type a question and options, submit: the answer, the frames with their nearest
    textual frames and the chart appear; a bad upload shows a message and the next request still works."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    seed, question, options = CASES[1]
    driver = open_browser(1280, 1700)
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video input[type=file]"))
        _ask_in_page(driver, wait, write_garbage_video(fx["root"] / "page" / "broken.mp4"), question, options)
        wait.until(lambda d: "broken.mp4: not a video" in d.find_element(By.TAG_NAME, "body").text)
        driver.refresh()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video input[type=file]"))
        _ask_in_page(driver, wait, fx["videos"][seed], question, options)
        wait.until(lambda d: _answer_text(d) == expected[seed][0])
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#explanation iframe"))
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "Traceback" not in body and "Error" not in body
        driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "#explanation iframe"))
        assert driver.find_elements(By.CSS_SELECTOR, "#scores-chart")
        frames = driver.find_elements(By.CSS_SELECTOR, "#frames .frame")
        assert len(frames) == MAX_FEATS  # the toy checkpoint reads 10 frames of the 24
        for frame in frames:
            assert frame.find_elements(By.CSS_SELECTOR, "img.thumb")
            captions = [c.text for c in frame.find_elements(By.CSS_SELECTOR, ".neighbors .caption")]
            assert len(captions) == 3 and all(captions), captions  # each frame's nearest textual frames, with text
        driver.execute_script("document.getElementById('frames').scrollIntoView({behavior: 'instant'})")  # frames, captions in view
        time.sleep(0.5)
        driver.switch_to.default_content()
        assert console_errors(driver) == []
        assert not screenshot_is_blank(save_screenshot(driver, "serve.png", tmp_path))
        # An example fills in its video, question and options; answering it gives Asker.ask's answer.
        example_seed, example_question, _ = CASES[0]
        driver.find_element(By.CSS_SELECTOR, "table[role=grid] tbody tr").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#question textarea").get_attribute("value") == example_question)
        driver.find_element(By.CSS_SELECTOR, "#submit").click()
        wait.until(lambda d: _answer_text(d) == expected[example_seed][0])
        assert console_errors(driver) == []
    finally:
        driver.quit()


def _ask_in_page(driver, wait, video: Path, question: str, options: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#video input[type=file]").send_keys(str(video))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video video, #video .file-name, #video [data-testid]"))
    time.sleep(1)  # the upload finishes before the value is sent
    for selector, text in (("#question textarea", question), ("#options textarea", options)):
        box = driver.find_element(By.CSS_SELECTOR, selector)
        box.clear()
        box.send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "#submit").click()


def _answer_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value")
