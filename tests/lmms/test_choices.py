"""Option lists come from what the prompt shows; replies use the prompt's label style."""

from __future__ import annotations

import pytest

from topa_plugin.lmms.choices import (
    AmbiguousOptionsError,
    OptionList,
    option_texts,
    parse_options,
)


def replies(options: OptionList) -> list[str]:
    return [options.reply(i) for i in range(len(options.texts))]


def test_lettered_options_and_instruction_lines():
    prompt = ("Select the best answer to the following multiple-choice question based on the video. "
              "Respond with only the letter (A, B, C, or D) of the correct option.\n"
              "What colour is the flag?\nA. Red.\nB. Blue.\nC. A U.S. flag.\nD. Green.\nThe best answer is:")
    options = parse_options(prompt)
    assert options.question == "What colour is the flag?"
    assert options.texts == ("Red.", "Blue.", "A U.S. flag.", "Green.")
    assert replies(options) == ["A", "B", "C", "D"]


def test_numbered_options_are_answered_with_numbers():
    options = parse_options("What colour?\n1. Red.\n2. Blue.\n3. Green.\nAnswer with the option's number from the given choices directly.")
    assert options.texts == ("Red.", "Blue.", "Green.")
    assert replies(options) == ["1", "2", "3"]
    assert options.question == "What colour?"


def test_parenthesised_labels_keep_their_parentheses():
    options = parse_options("What appears first?\n(A) a dog\n(B) a cat\nOnly give the best option.\nBest option: (")
    assert options.texts == ("a dog", "a cat")
    assert replies(options) == ["(A)", "(B)"]
    assert options.question == "What appears first?"


def test_mvbench_scaffolding_is_removed_from_the_question():
    prompt = "Question:what is the man doing?\nOption:\n(A) running\n(B) sitting\nOnly give the best option.\n"
    options = parse_options(prompt)
    assert options.question == "what is the man doing?"
    assert options.texts == ("running", "sitting")


@pytest.mark.parametrize("word,labels", [("Caption", "AB"), ("Sentence", "12"), ("Option", "12")])
def test_caption_and_sentence_lists_are_options(word, labels):
    prompt = (f"Which one matches the video?\n{word} {labels[0]}: a man runs\n{word} {labels[1]}: a man walks\n"
              "Please directly give the best option:")
    options = parse_options(prompt)
    assert options.texts == ("a man runs", "a man walks")
    assert replies(options) == [f"{word} {labels[0]}", f"{word} {labels[1]}"]


def test_unlabelled_options_keep_their_start():
    assert option_texts(["U.S. flag", "A: red", "B) blue"]) == ["U.S. flag", "A: red", "B) blue"]
    assert option_texts(["A. U.S. flag", "B. red"]) == ["U.S. flag", "red"]
    assert parse_options("Which flag?\nU.S. flag\nCanada flag") is None


def test_no_options_shown_means_no_options_even_if_the_doc_has_some():
    doc = {"question": "What colour?", "options": ["A. Red", "B. Blue"]}
    assert parse_options("What colour?\nPlease answer the question with a short answer.", doc) is None


def test_labels_must_run_in_sequence_from_the_first():
    assert parse_options("Q?\nA. one\nC. three") is None
    assert parse_options("Q?\nB. two\nC. three") is None
    options = parse_options("Q?\nA. one\nB. two\nD. four")
    assert options.texts == ("one", "two")


def test_the_doc_picks_between_several_blocks_and_never_adds_options():
    prompt = "Subtitles:\nA. hello there\nB. goodbye\nWhat colour?\nA. Red\nB. Blue\nC. Green"
    doc = {"options": ["A. Red", "B. Blue", "C. Green"]}
    options = parse_options(prompt, doc)
    assert options.texts == ("Red", "Blue", "Green")
    assert options.question == "Subtitles:\nA. hello there\nB. goodbye\nWhat colour?"
    with pytest.raises(AmbiguousOptionsError, match="2 option blocks"):
        parse_options(prompt, {"options": ["Red", "Blue"]})
    with pytest.raises(AmbiguousOptionsError):
        parse_options(prompt, {})
