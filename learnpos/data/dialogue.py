"""Multi-turn conversations: read DailyDialog or JSONL dialogues into turns with speaker ids.

Two layouts of a dataset folder (`dialogue.data`):

    DailyDialog (Li et al. 2017)   train/dialogues_train.txt (or train.zip holding it, read
                                   without unpacking), validation/dialogues_validation.txt,
                                   test/dialogues_test.txt (or validation.zip, test.zip):
                                   one dialogue per line, utterances ended by `__eou__`; the
                                   two speakers alternate, named "A" (who opens) and "B"
    JSONL                          train.jsonl, valid.jsonl (or validation.jsonl), test.jsonl:
                                   one dialogue per line,
                                   {"turns": [{"speaker": "user", "text": "..."}, ...]},
                                   any number of speakers, ids given in order of first
                                   appearance in the training split

Malformed input (a line that is not JSON, a turn without text or speaker, an empty dialogue,
a speaker of the validation or test split never seen in training) is a `DataError` naming the
file and the line.

Examples (`build_examples`): (history, response) windows of whole turns laid out as token,
position, speaker and turn ids (`layout`), the history cut from the left at whole turns;
`newest_turns_that_fit` makes the same cut for a conversation in progress (chat).
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learnpos.data.sources import FileLog
from learnpos.data.text import decode_utf8, not_regular
from learnpos.errors import DataError
from learnpos.files import loads_json

SPLITS = ("train", "valid", "test")
EOU = "__eou__"
_DAILYDIALOG = {"train": "train", "valid": "validation", "test": "test"}  # our split -> its folder name
_JSONL = {"train": ("train.jsonl",), "valid": ("valid.jsonl", "validation.jsonl"), "test": ("test.jsonl",)}


@dataclass(frozen=True)
class Turn:
    speaker: int  # index into DialogueData.speakers
    text: str


@dataclass
class DialogueData:
    splits: dict[str, list[list[Turn]]]  # split -> dialogues, each a list of turns in order
    speakers: list[str]  # speaker id -> name
    source: str = ""
    layout: str = ""  # "dailydialog" | "jsonl"
    counts: dict[str, int] = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # what was read (`learnpos.data.sources.FileLog.record`)

    def split(self, name: str) -> list[list[Turn]]:
        if name not in self.splits:
            raise DataError(f"no split '{name}'; one of: {', '.join(self.splits)}")
        return self.splits[name]


def _read_dailydialog_split(folder: Path, split: str, files: FileLog) -> tuple[str, str] | None:
    """(text, source) of one DailyDialog split, from the plain file or from its zip."""
    name = _DAILYDIALOG[split]
    member = f"{name}/dialogues_{name}.txt"
    plain = folder / member
    if plain.is_file():
        return decode_utf8(files.add(plain, plain.read_bytes()), str(plain)), str(plain)
    archive = folder / f"{name}.zip"
    if archive.is_file():
        source = f"{archive}!{member}"
        raw = files.add(archive, archive.read_bytes())
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as z:
                names = z.namelist()
                found = next((n for n in names if n == member or n.endswith("/" + member)), None)
                if found is None:
                    raise DataError(f"{archive} holds no {member} (members: {', '.join(names[:5])}...)")
                return decode_utf8(z.read(found), source), source
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
            raise DataError(f"{archive} is not a readable zip ({e}); download it again") from None
    return None


def _parse_dailydialog(text: str, source: str) -> list[list[Turn]]:
    dialogues = []
    for i, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        pieces = line.split(EOU)
        if pieces[-1].strip():
            raise DataError(f"{source} line {i}: text after the last {EOU} ({pieces[-1].strip()[:40]!r}); "
                            f"every utterance ends with {EOU}")
        utterances = [p.strip() for p in pieces[:-1]]
        if not utterances:
            raise DataError(f"{source} line {i}: no utterance (expected text ended by {EOU})")
        for k, u in enumerate(utterances, 1):
            if not u:
                raise DataError(f"{source} line {i}: utterance {k} is empty")
        dialogues.append([Turn(k % 2, u) for k, u in enumerate(utterances)])
    return dialogues


def _parse_jsonl(text: str, source: str, speakers: dict[str, int], grow: bool) -> list[list[Turn]]:
    dialogues = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{source} line {i}"
        try:
            obj = loads_json(line)
        except json.JSONDecodeError as e:
            at = f" at column {e.colno}" if e.doc else ""
            raise DataError(f"{where}: not JSON ({e.msg}{at})") from None
        turns = obj.get("turns") if isinstance(obj, dict) else None
        if not isinstance(turns, list):
            raise DataError(f'{where}: expected {{"turns": [{{"speaker": ..., "text": ...}}, ...]}}')
        if not turns:
            raise DataError(f"{where}: the dialogue has no turns")
        dialogue = []
        for k, turn in enumerate(turns, 1):
            if not isinstance(turn, dict):
                raise DataError(f'{where}: turn {k} is not an object with "speaker" and "text"')
            speaker, utterance = turn.get("speaker"), turn.get("text")
            if not isinstance(utterance, str) or not utterance.strip():
                raise DataError(f'{where}: turn {k} has no text (a non-empty "text" string)')
            if not isinstance(speaker, str | int) or isinstance(speaker, bool) or str(speaker).strip() == "":
                raise DataError(f'{where}: turn {k} has no speaker (a "speaker" name)')
            speaker = str(speaker)
            if speaker not in speakers:
                if not grow:
                    raise DataError(f"{where}: speaker '{speaker}' never speaks in the training split "
                                    f"(known: {', '.join(speakers)}); the model has no embedding for them")
                speakers[speaker] = len(speakers)
            dialogue.append(Turn(speakers[speaker], utterance.strip()))
        dialogues.append(dialogue)
    return dialogues


def load_dialogues(path: str | Path) -> DialogueData:
    """The train, valid and test dialogues of a DailyDialog or JSONL folder (module docstring)."""
    if not str(path):
        raise DataError("task 'dialogue' needs data: pass --data PATH (a DailyDialog folder, e.g. "
                        "../shared/data/dailydialog, or a folder with train/valid/test.jsonl)")
    folder = Path(path)
    files = FileLog(folder)
    if folder.exists() and not folder.is_dir() and not folder.is_file():
        raise not_regular(folder, "a DailyDialog folder or one with train/valid/test.jsonl")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give a DailyDialog folder or one with train/valid/test.jsonl")
    splits: dict[str, list[list[Turn]]] = {}
    if any((folder / f).is_file() for names in _JSONL.values() for f in names):
        speakers: dict[str, int] = {}
        for split in SPLITS:
            file = next((folder / f for f in _JSONL[split] if (folder / f).is_file()), None)
            if file is None:
                raise DataError(f"{folder} has no {' or '.join(_JSONL[split])} (JSONL layout: train.jsonl, "
                                f"valid.jsonl, test.jsonl)")
            splits[split] = _parse_jsonl(decode_utf8(files.add(file, file.read_bytes()), str(file)), str(file),
                                         speakers, grow=split == "train")
        names, layout = list(speakers), "jsonl"
    else:
        for split in SPLITS:
            found = _read_dailydialog_split(folder, split, files)
            if found is None:
                name = _DAILYDIALOG[split]
                raise DataError(f"{folder} has neither {name}/dialogues_{name}.txt nor {name}.zip (DailyDialog "
                                f"layout), nor train/valid/test.jsonl")
            splits[split] = _parse_dailydialog(*found)
        names, layout = ["A", "B"], "dailydialog"
    for split, dialogues in splits.items():
        if not dialogues:
            raise DataError(f"the {split} split of {folder} has no dialogue")
    counts = {split: sum(len(d) for d in ds) for split, ds in splits.items()}
    return DialogueData(splits, names, str(folder), layout, counts, files.record())


# ------------------------------------------------------------------------------ examples


@dataclass
class Examples:
    """One split's examples, flat: tokens of example i are tokens[starts[i]:starts[i+1]]."""

    tokens: np.ndarray  # int32: history + response, each utterance followed by EOU
    positions: np.ndarray
    speakers: np.ndarray
    turns: np.ndarray
    starts: np.ndarray  # (N + 1,)
    context: np.ndarray  # (N,) tokens before the response
    response_chars: np.ndarray  # (N,) characters of the response + 1 for its end
    dropped: int  # responses that did not fit with their previous turn

    def __len__(self) -> int:
        return len(self.context)


def layout(utterances: list[list[int]], speakers: list[int], eou: int, restart: bool) -> tuple[list[int], ...]:
    """(tokens, positions, speakers, turns) of consecutive utterances, the last one being turn 0:
    each utterance's ids followed by `eou`; positions running over all of them, or restarting at
    0 in every utterance (`restart`); turns counted back from the last."""
    toks, pos, spk, turn = [], [], [], []
    n = len(utterances)
    for k, (ids, s) in enumerate(zip(utterances, speakers, strict=True)):
        m = len(ids) + 1
        toks += ids + [eou]
        pos += list(range(m)) if restart else list(range(len(pos), len(pos) + m))
        spk += [s] * m
        turn += [n - 1 - k] * m
    return toks, pos, spk, turn


def newest_turns_that_fit(lengths: list[int], budget: int, max_turns: int) -> int:
    """How many of the newest turns (token counts `lengths`, oldest first) fit in `budget`
    tokens with an end token each, at most `max_turns` of them."""
    keep, used = 0, 0
    for k in range(len(lengths) - 1, -1, -1):
        if keep == max_turns or used + lengths[k] + 1 > budget:
            break
        keep += 1
        used += lengths[k] + 1
    return keep


def history_layout(ids: list[list[int]], speakers: list[int], eou: int, restart: bool, block_size: int,
                   max_turns: int, reply_room: int) -> tuple[tuple[list[int], ...], int]:
    """The layout (tokens, positions, speakers, turns) of the newest whole turns (token ids `ids`,
    oldest first; at most `max_turns`) that leave `reply_room` of `block_size` tokens for a reply,
    with turns counted so the reply to come is turn 0; and how many older turns were dropped.
    ValueError if not even the last turn fits."""
    keep = newest_turns_that_fit([len(i) for i in ids], block_size - reply_room, max_turns)
    if keep == 0:
        raise ValueError(f"the last turn alone needs {len(ids[-1]) + 1} tokens; with {reply_room} for the reply "
                         f"that is more than dialogue.block_size={block_size}: say it shorter")
    start = len(ids) - keep
    toks, pos, spk, turn = layout(ids[start:], speakers[start:], eou, restart)
    return (toks, pos, spk, [t + 1 for t in turn]), start


def build_examples(dialogues: list[list[Turn]], encode, eou: int, restart: bool, block_size: int,
                   max_turns: int) -> Examples:
    """A (history, response) example for every turn after the first of each dialogue: the
    response and as many whole turns before it as fit in `block_size` + 1 tokens (inputs and
    targets are shifted by one), at most `max_turns`; a response that does not fit with even
    its previous turn is dropped (counted). `encode` maps a list of texts to token ids."""
    T = block_size + 1
    cols: list[list[int]] = [[], [], [], []]
    starts, context, chars, dropped = [0], [], [], 0
    for dialogue in dialogues:
        ids = encode([t.text for t in dialogue])
        for k in range(1, len(dialogue)):
            j = k - newest_turns_that_fit([len(i) for i in ids[:k]], T - len(ids[k]) - 1, max_turns)
            if j == k:  # not even the previous turn fits with the response
                dropped += 1
                continue
            parts = layout(ids[j:k + 1], [t.speaker for t in dialogue[j:k + 1]], eou, restart)
            for col, part in zip(cols, parts, strict=True):
                col += part
            starts.append(len(cols[0]))
            context.append(len(parts[0]) - len(ids[k]) - 1)
            chars.append(len(dialogue[k].text) + 1)
    arrays = [np.asarray(c, dtype=np.int32) for c in cols]  # int32: a split holds millions of tokens
    return Examples(*arrays, np.asarray(starts, dtype=np.int64), np.asarray(context, dtype=np.int64),
                    np.asarray(chars, dtype=np.int64), dropped)
