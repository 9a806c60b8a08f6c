"""A valid release-schema Tideo, for tests that check, read and write records."""

from __future__ import annotations


def good_record(idx: str = "rec_a") -> dict:
    return {
        "idx": idx,
        "frames": [
            {"frame_caption": "A man opens a fridge.", "object_1": "A white fridge."},
            {"frame_caption": "He pours milk into a glass.", "object_1": "A glass.", "object_2": "A carton of milk."},
        ],
        "global_video_caption": "A man takes milk from the fridge and pours a glass.",
        "QAs": [
            {"question": "What did the man do after opening the fridge?",
             "options": ["Poured milk", "Closed the door", "Left", "Ate bread", "Slept"],
             "answer": "A", "answer_open_ended": "He poured milk into a glass."},
            {"question": "What was poured?", "options": ["Juice", "Water", "Milk", "Tea", "Soup"], "answer": "C"},
        ],
    }
